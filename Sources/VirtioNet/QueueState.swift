import CTapwire
import SystemCalls
import Virtqueue
import RateLimiter
import VhostUser
import Synchronization
import PortSecurity

/// Why a frame was dropped, for counters and metrics. A fixed set so counting never allocates.
public enum DropReason: Hashable, CaseIterable, Sendable {
    case badChain, badHeader, tapError, queueDisabled, truncated, noGuest
    /// Refused by the VM's port security.
    case portSecurity(PortViolation)

    public static let allCases: [DropReason] = [.badChain, .badHeader, .tapError, .queueDisabled, .truncated, .noGuest]
        + PortViolation.allCases.map { .portSecurity($0) }

    /// Its counter's slot in `QueueStats`.
    @inline(__always)
    var index: Int {
        switch self {
        case .badChain: return 0
        case .badHeader: return 1
        case .tapError: return 2
        case .queueDisabled: return 3
        case .truncated: return 4
        case .noGuest: return 5
        case .portSecurity(let violation): return 6 + violation.rawValue
        }
    }

    public var label: String {
        switch self {
        case .badChain: return "bad_chain"
        case .badHeader: return "bad_header"
        case .tapError: return "tap_error"
        case .queueDisabled: return "queue_disabled"
        case .truncated: return "truncated"
        case .noGuest: return "no_guest"
        case .portSecurity(let violation): return violation.label
        }
    }
}

/// Counters of one virtqueue. One writer at a time (the queue's thread, or the loop while it
/// is parked), so a relaxed load and store suffice, no read-modify-write; readers on other
/// threads load them relaxed without parking the packet path, as Firecracker's metrics do.
/// Each counter is exact; a reader may see one a few frames ahead of another.
public final class QueueStats: Sendable {
    private let _frames = Atomic<UInt64>(0), _bytes = Atomic<UInt64>(0), _kicks = Atomic<UInt64>(0)
    private let _interrupts = Atomic<UInt64>(0), _tapBatches = Atomic<UInt64>(0), _interruptsHeld = Atomic<UInt64>(0)
    private let _throttledEvents = Atomic<UInt64>(0), _throttledNanoseconds = Atomic<UInt64>(0)
    /// One counter per `DropReason`, at its `index`.
    private let dropCounts = InlineArray<16, Atomic<UInt64>> { _ in Atomic(0) }

    public var frames: UInt64 { get { _frames.load(ordering: .relaxed) } set { _frames.store(newValue, ordering: .relaxed) } }
    public var bytes: UInt64 { get { _bytes.load(ordering: .relaxed) } set { _bytes.store(newValue, ordering: .relaxed) } }
    public var kicks: UInt64 { get { _kicks.load(ordering: .relaxed) } set { _kicks.store(newValue, ordering: .relaxed) } }
    public var interrupts: UInt64 {
        get { _interrupts.load(ordering: .relaxed) } set { _interrupts.store(newValue, ordering: .relaxed) }
    }
    /// io_uring submissions to the TAP (frames / tapBatches is the batch size reached).
    public var tapBatches: UInt64 {
        get { _tapBatches.load(ordering: .relaxed) } set { _tapBatches.store(newValue, ordering: .relaxed) }
    }
    /// Interrupts held back by moderation (each then went out later, or not at all if the
    /// guest no longer wanted it).
    public var interruptsHeld: UInt64 {
        get { _interruptsHeld.load(ordering: .relaxed) } set { _interruptsHeld.store(newValue, ordering: .relaxed) }
    }
    public var throttledEvents: UInt64 {
        get { _throttledEvents.load(ordering: .relaxed) } set { _throttledEvents.store(newValue, ordering: .relaxed) }
    }
    public var throttledNanoseconds: UInt64 {
        get { _throttledNanoseconds.load(ordering: .relaxed) } set { _throttledNanoseconds.store(newValue, ordering: .relaxed) }
    }
    public init() {
        precondition(DropReason.allCases.count <= dropCounts.count)
    }

    @inline(__always)
    public func drop(_ reason: DropReason) {
        let index = reason.index
        dropCounts[index].store(dropCounts[index].load(ordering: .relaxed) &+ 1, ordering: .relaxed)
    }

    public func drops(_ reason: DropReason) -> UInt64 { dropCounts[reason.index].load(ordering: .relaxed) }

    public var totalDrops: UInt64 { DropReason.allCases.reduce(0) { $0 &+ drops($1) } }
}

/// Everything the protocol has told us about one virtqueue, and the running ring once it starts.
public final class QueueState {
    public let index: Int
    public var isReceive: Bool { index % 2 == 0 }
    public var pair: Int { index / 2 }

    public var size: UInt16 = 0
    public var address: VringAddress?
    public var base: UInt16 = 0
    public var kick: Descriptor?
    public var call: Descriptor?
    public var err: Descriptor?
    public var enabled = false
    /// Set by SET_VRING_KICK, cleared by GET_VRING_BASE.
    public var started = false
    public var ring: SplitQueue?
    public var fault: String?
    /// Readable from any thread.
    public let stats = QueueStats()

    /// Reused for every chain of this queue; points into guest memory.
    public let vectors = IOVectorBuffer(capacity: 1024)
    /// Receive: chains taken for a mergeable receive but not yet filled. Transmit: the batch
    /// whose writes are in flight.
    let pending = UnsafeMutablePointer<PendingChain>.allocate(capacity: 1024)
    /// Transmit with port security: per batch slot, the copy of a frame's virtio-net header
    /// and first bytes that was checked and that the TAP write then sends in their place.
    let headerCopies = UnsafeMutableRawPointer.allocate(byteCount: transmitBatchLimit * headerCopyStride, alignment: 8)
    var limiter: DirectionLimiter
    var throttledSince: UInt64 = 0
    /// The TAP queue's io_uring, when reads and writes go in batches (shared by the pair).
    var tapRing: IOUring?
    /// Receive: reads to put in the next io_uring batch (grows while the TAP fills them).
    var receiveBatch = 1
    /// Cached raw call fd for the packet path (-1 when none).
    var callFD: Int32 = -1
    /// Counts chains taken for receive, to tell whether unfilled ones can be given back.
    var popSequence: UInt64 = 0
    /// Receive writes the dirty log could not cover (it ended before that guest memory).
    var unloggedWrites: UInt64 = 0

    let moderation: InterruptModeration
    /// When this queue last interrupted the guest (monotonic ns; 0: not yet), and its byte
    /// count then. Kept only with moderation on.
    var lastInterrupt: UInt64 = 0
    var bytesAtInterrupt: UInt64 = 0
    /// A held interrupt is due then (monotonic ns; 0: none held). The pair's thread sends it
    /// by timer, unless the receive queue's next interrupt carries it first.
    public internal(set) var interruptHeldUntil: UInt64 = 0
    /// The other queue of the pair. SAFETY: both queues belong to the device's `queues`
    /// array for its whole life, so the reference is never dangling; unowned(unsafe) keeps
    /// reference counting off the packet path.
    unowned(unsafe) var partner: QueueState?

    init(index: Int, limits: DirectionLimits, moderation: InterruptModeration = .off, now: UInt64) {
        self.index = index
        self.limiter = DirectionLimiter(limits, now: now)
        self.moderation = moderation
    }

    deinit {
        pending.deallocate()
        headerCopies.deallocate()
    }

    public var isRunning: Bool { ring != nil && fault == nil }

    /// Closes the frontend's call and error eventfds (it went away).
    func dropNotifiers() {
        call = nil
        err = nil
        callFD = -1
    }

    /// RESET_DEVICE: the ring stops and forgets its set-up; counters stay. The call and error eventfds stay:
    /// QEMU hands them over while it initialises the device, before it resets it, and sends
    /// the error eventfd only then.
    func resetRing() {
        size = 0
        address = nil
        base = 0
        kick = nil
        enabled = false
        started = false
        ring = nil
        fault = nil
        vectors.removeAll()
        popSequence = 0
        throttledSince = 0
        lastInterrupt = 0
        interruptHeldUntil = 0
    }

    /// Called after each frame of a batch: publishes (and signals if the guest asked) once
    /// `publishEveryBytes` or `publishEveryFrames` have accumulated, so the guest works in
    /// parallel with us instead of waiting for the end of a long batch.
    @inline(__always)
    func publishIfDue(_ unpublishedBytes: inout Int, adding bytes: Int, frames: Int) {
        unpublishedBytes += bytes
        if unpublishedBytes >= publishEveryBytes || frames & (publishEveryFrames - 1) == 0 {
            signalGuest()
            unpublishedBytes = 0
        }
    }

    /// Publishes what was added to the used ring and interrupts the guest if it asked, now
    /// or, with moderation, a little later (see `InterruptModeration`).
    @inline(__always)
    func signalGuest() {
        guard let ring else { return }
        ring.publishUsed()
        guard callFD >= 0 else { return }
        if moderation.isEnabled {
            signalModerated(ring)
        } else if ring.needsInterrupt() {
            EventFD.signal(callFD)
            stats.interrupts &+= 1
        }
    }

    private func signalModerated(_ ring: SplitQueue) {
        // Already held: the timer (or the receive interrupt) sends it with all published since.
        guard interruptHeldUntil == 0, ring.wantsInterrupt() else { return }
        let now = monotonicNanoseconds()
        let deadline = isReceive
            ? moderation.receiveDeadline(now: now, lastInterrupt: lastInterrupt, bytesSinceInterrupt: stats.bytes &- bytesAtInterrupt)
            : moderation.transmitDeadline(now: now, receiveLastInterrupt: partner?.lastInterrupt ?? 0)
        if let deadline {
            interruptHeldUntil = deadline
            stats.interruptsHeld &+= 1
            return
        }
        interruptIfWanted(ring, now: now)
    }

    /// Sends a held interrupt (its time came, or the queue stops) if the guest still wants it:
    /// it may have looked at the ring meanwhile and need none.
    func releaseHeldInterrupt(now: UInt64) {
        guard interruptHeldUntil != 0 else { return }
        interruptHeldUntil = 0
        guard let ring, callFD >= 0 else { return }
        interruptIfWanted(ring, now: now)
    }

    private func interruptIfWanted(_ ring: SplitQueue, now: UInt64) {
        guard ring.needsInterrupt() else { return }
        EventFD.signal(callFD)
        stats.interrupts &+= 1
        lastInterrupt = now
        bytesAtInterrupt = stats.bytes
        // The transmit completions held for this interrupt go with it.
        if isReceive, let partner, partner.interruptHeldUntil != 0 { partner.releaseHeldInterrupt(now: now) }
    }
}

/// A chain taken from the ring and not yet returned: on receive, waiting to be filled; on
/// transmit, its write in flight (capacity is then the frame's length).
struct PendingChain {
    var head: UInt16
    var capacity: UInt32
    var firstVector: Int
    var popSequence: UInt64 = 0
    var vectorCount: Int = 0
    /// Batched receive: what the read returned (bytes or -errno).
    var result: Int = 0
}
