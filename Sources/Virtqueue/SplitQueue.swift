import CTapwire
import GuestMemory

/// The device side of one split virtqueue over guest memory.
///
/// Ordering (virtio 1.x, 2.7.13): the avail index is loaded with acquire before the ring
/// entries it covers are read; used entries are written before the used index is stored with
/// release; a full fence separates publishing the used index (or re-enabling kicks) from
/// reading the driver's event fields, so neither side can miss the other's update.
/// Descriptors are copied out of guest memory once and checked; nothing is used in place.
public final class SplitQueue {
    public let size: UInt16
    public let memory: GuestMemoryMap
    public let indirectAllowed: Bool
    public let eventIndex: Bool
    @usableFromInline let mask: UInt16
    @usableFromInline let ring: RingPointers

    /// Next avail entry to consume (the "last_avail_idx" GET_VRING_BASE reports).
    public private(set) var nextAvail: UInt16
    /// Next used entry to fill; published to the guest by `publishUsed()`.
    public private(set) var nextUsed: UInt16
    private var publishedUsed: UInt16
    /// The used index at the last `needsInterrupt()`: what the guest was last told about.
    private var signalledUsed: UInt16
    /// False until the first interrupt: that one goes out whatever used_event says (after a
    /// reconnect it may be stale).
    private var signalledUsedValid = false

    /// While a live migration logs dirty pages (VHOST_F_LOG_ALL): the log, for every byte the
    /// device writes into this queue's guest buffers and, with `usedRingLogAddress`, its used ring.
    public var dirtyLog: DirtyLog?
    /// The used ring's guest physical address, given in SET_VRING_ADDR with VHOST_VRING_F_LOG.
    public var usedRingLogAddress: UInt64?

    public init(size: UInt16, ring: RingPointers, memory: GuestMemoryMap, nextAvail: UInt16, nextUsed: UInt16,
                indirectAllowed: Bool, eventIndex: Bool) {
        precondition(Ring.isValidSize(UInt32(size)), "queue size validated by the caller")
        self.size = size
        self.mask = size &- 1
        self.ring = ring
        self.memory = memory
        self.nextAvail = nextAvail
        self.nextUsed = nextUsed
        self.publishedUsed = nextUsed
        self.signalledUsed = nextUsed
        self.indirectAllowed = indirectAllowed
        self.eventIndex = eventIndex
    }

    /// Resolves and checks the ring addresses, which SET_VRING_ADDR gives as frontend virtual
    /// addresses. Returns nil with a reason when a part lies outside guest memory or is misaligned.
    public static func resolveRing(memory: GuestMemoryMap, size: UInt16, descriptors: UInt64, avail: UInt64,
                                   used: UInt64) -> Result<RingPointers, RingAddressError> {
        guard descriptors % 16 == 0, avail % 2 == 0, used % 4 == 0 else { return .failure(.misaligned) }
        guard let d = memory.hostPointer(userspace: descriptors, length: Ring.descriptorTableBytes(size)) else {
            return .failure(.outsideMemory(part: "descriptor table", address: descriptors))
        }
        guard let a = memory.hostPointer(userspace: avail, length: Ring.availRingBytes(size)) else {
            return .failure(.outsideMemory(part: "avail ring", address: avail))
        }
        guard let u = memory.hostPointer(userspace: used, length: Ring.usedRingBytes(size)) else {
            return .failure(.outsideMemory(part: "used ring", address: used))
        }
        return .success(RingPointers(descriptors: d, avail: a, used: u))
    }

    // MARK: - Driver's fields

    @inline(__always)
    public var availIndex: UInt16 { tw_load_acquire_u16(ring.avail + 2) }

    /// Entries the driver has made available and we have not consumed yet.
    @inline(__always)
    public func pendingCount() throws(QueueFault) -> UInt16 {
        let index = availIndex
        let pending = index &- nextAvail
        guard pending <= size else { throw .availIndexJump(seen: index, expected: nextAvail, size: size) }
        return pending
    }

    // MARK: - Consuming chains

    /// Takes the next available chain and describes its buffers in `buffers` (appended after
    /// what is already there). Returns nil when nothing is available. A chain that breaks the
    /// rules is consumed and reported as `.refused` so the caller returns it with length 0.
    @inline(__always)
    public func popChain(into buffers: IOVectorBuffer, writable: Bool, maxBytes: UInt64) throws(QueueFault) -> PoppedChain? {
        guard try pendingCount() > 0 else { return nil }
        // SAFETY: the avail ring was bounds-checked for `size` entries at resolveRing; slot < size.
        let head = tw_load_relaxed_u16(ring.avail + 4 + 2 * Int(nextAvail & mask))
        guard head < size else { throw .headOutOfRange(head: head, size: size) }
        nextAvail &+= 1
        let startCount = buffers.count
        let startBytes = buffers.totalBytes
        switch walkChain(head: head, into: buffers, writable: writable, maxBytes: maxBytes) {
        case .success(let bytes):
            return PoppedChain(head: head, bytes: bytes, fault: nil, firstVector: startCount)
        case .failure(let fault):
            buffers.truncate(to: startCount, totalBytes: startBytes)
            return PoppedChain(head: head, bytes: 0, fault: fault, firstVector: startCount)
        }
    }

    /// Gives back the last `count` chains taken (e.g. the TAP had nothing to read after all).
    @inline(__always)
    public func undoPop(_ count: UInt16 = 1) {
        nextAvail &-= count
    }

    @usableFromInline
    func walkChain(head: UInt16, into buffers: IOVectorBuffer, writable: Bool, maxBytes: UInt64) -> Result<UInt64, ChainFault> {
        var table = ring.descriptors
        var tableSize = Int(size)
        var index = head
        var hops = 0
        var inIndirect = false
        var total: UInt64 = 0
        while true {
            guard Int(index) < tableSize else { return .failure(.nextOutOfRange(index: index, tableSize: tableSize)) }
            hops += 1
            guard hops <= tableSize else { return .failure(.chainTooLong(limit: tableSize)) }
            // SAFETY: index < tableSize and the table was bounds-checked for tableSize entries;
            // the descriptor is copied out once so later guest writes cannot change what we checked.
            let descriptor = (table + 16 * Int(index)).loadUnaligned(as: tw_vring_desc.self)
            if descriptor.flags & Ring.descriptorIndirect != 0 {
                guard indirectAllowed else { return .failure(.indirectNotNegotiated) }
                guard !inIndirect else { return .failure(.nestedIndirect) }
                guard descriptor.flags & Ring.descriptorNext == 0 else { return .failure(.indirectWithNext) }
                let length = descriptor.len
                guard length > 0, length % 16 == 0, length / 16 <= UInt32(Ring.maxSize) else {
                    return .failure(.indirectBadLength(length))
                }
                guard let indirect = memory.hostPointer(guestPhysical: descriptor.addr, length: UInt64(length)) else {
                    return .failure(.indirectOutsideMemory(address: descriptor.addr, length: length))
                }
                table = indirect
                tableSize = Int(length / 16)
                index = 0
                hops = 0
                inIndirect = true
                continue
            }
            let isWritable = descriptor.flags & Ring.descriptorWrite != 0
            guard isWritable == writable else { return .failure(.wrongDirection(expectedWritable: writable)) }
            if descriptor.len > 0 {
                total += UInt64(descriptor.len)
                guard total <= maxBytes else { return .failure(.tooLarge(bytes: total)) }
                var outOfRoom = false
                let inside = memory.forEachHostSegment(guestPhysical: descriptor.addr, length: UInt64(descriptor.len)) { base, count in
                    if buffers.append(base, count) { return true }
                    outOfRoom = true
                    return false
                }
                if outOfRoom { return .failure(.tooManySegments(limit: buffers.capacity)) }
                guard inside else { return .failure(.bufferOutsideMemory(address: descriptor.addr, length: descriptor.len)) }
            }
            guard descriptor.flags & Ring.descriptorNext != 0 else { return .success(total) }
            index = descriptor.next
        }
    }

    // MARK: - Returning chains

    /// Records a finished chain; the guest sees it only after `publishUsed()`.
    @inline(__always)
    public func addUsed(head: UInt16, length: UInt32) {
        let slot = ring.used + 4 + 8 * Int(nextUsed & mask)
        // SAFETY: the used ring was bounds-checked for `size` elements; slot index < size.
        slot.storeBytes(of: tw_vring_used_elem(id: UInt32(head), len: length), as: tw_vring_used_elem.self)
        nextUsed &+= 1
    }

    /// Makes every used entry added so far visible to the guest (one release store per batch).
    @inline(__always)
    public func publishUsed() {
        guard publishedUsed != nextUsed else { return }
        tw_store_release_u16(ring.used + 2, nextUsed)
        publishedUsed = nextUsed
        logUsedRingWrite()
    }

    /// Marks the used ring's pages in the dirty log (entries, index, flags and avail_event:
    /// the ring is small, so all of it), when a migration is logging.
    @inline(__always)
    func logUsedRingWrite() {
        guard let dirtyLog, let usedRingLogAddress else { return }
        dirtyLog.mark(guestPhysical: usedRingLogAddress, length: Ring.usedRingBytes(size))
    }

    /// Whether the guest asked to be interrupted for what was published since the last signal.
    /// Call after `publishUsed()`; records the signal as sent when it returns true.
    @inline(__always)
    public func needsInterrupt() -> Bool {
        let wanted = wantsInterrupt()
        signalledUsed = publishedUsed
        if wanted { signalledUsedValid = true }
        return wanted
    }

    /// The interrupt eventfd changed: what was signalled on the old one may never have reached
    /// the guest, so the next interrupt goes out whatever used_event says.
    public func forgetSignalledState() {
        signalledUsedValid = false
    }

    /// `needsInterrupt()` without recording anything: for a caller that may hold the
    /// interrupt back and ask again later (the range since the last signal then still counts).
    @inline(__always)
    public func wantsInterrupt() -> Bool {
        tw_fence_seq_cst()
        // Nothing published since the last ask (or since the start): nothing to tell.
        if publishedUsed == signalledUsed { return false }
        if eventIndex {
            guard signalledUsedValid else { return true }
            // used_event sits after the avail ring's entries.
            let usedEvent = tw_load_relaxed_u16(ring.avail + 4 + 2 * Int(size))
            let new = publishedUsed
            return (new &- usedEvent &- 1) < (new &- signalledUsed)
        }
        return tw_load_relaxed_u16(ring.avail) & Ring.availNoInterrupt == 0
    }

    /// Asks the driver for kicks again and reports whether more work slipped in meanwhile
    /// (then the caller keeps going instead of sleeping).
    @inline(__always)
    public func enableKicks() throws(QueueFault) -> Bool {
        if eventIndex {
            // avail_event sits after the used ring's entries.
            tw_store_relaxed_u16(ring.used + 4 + 8 * Int(size), nextAvail)
        } else {
            tw_store_relaxed_u16(ring.used, 0)
        }
        logUsedRingWrite()
        tw_fence_seq_cst()
        return try pendingCount() > 0
    }

    /// Asks the driver not to kick while we are polling anyway.
    @inline(__always)
    public func disableKicks() {
        if !eventIndex {
            tw_store_relaxed_u16(ring.used, Ring.usedNoNotify)
            logUsedRingWrite()
        }
    }

    /// Keeps the driver's kick point at our position after a batch (event idx only).
    @inline(__always)
    public func updateAvailEvent() {
        if eventIndex {
            tw_store_relaxed_u16(ring.used + 4 + 8 * Int(size), nextAvail)
            logUsedRingWrite()
        }
    }
}

public struct PoppedChain: Equatable, Sendable {
    public var head: UInt16
    /// Bytes the chain's buffers hold.
    public var bytes: UInt64
    /// Set when the chain was refused; return it with length 0.
    public var fault: ChainFault?
    /// Where this chain's iovecs start in the buffer.
    public var firstVector: Int
}

public enum RingAddressError: Error, Equatable, CustomStringConvertible, Sendable {
    case misaligned
    /// A packed ring's parts: the descriptor ring on 16 bytes, the two event areas on 4.
    case misalignedPacked
    case outsideMemory(part: String, address: UInt64)

    public var description: String {
        switch self {
        case .misaligned: return "ring addresses are misaligned (descriptors 16, avail 2, used 4 bytes)"
        case .misalignedPacked: return "packed ring addresses are misaligned (descriptors 16, driver and device areas 4 bytes)"
        case .outsideMemory(let part, let address): return "\(part) at \(hex(address)) is not inside guest memory"
        }
    }
}
