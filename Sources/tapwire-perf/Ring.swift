import Glibc
import CTapwire
import SystemCalls
import VhostUserFrontend

/// A fast driver (guest) side of one split virtqueue for load generation.
///
/// `DriverQueue` from VhostUserFrontend is written for tests: every post allocates arrays and
/// dictionary entries. This one works on the same rings (it takes their addresses from the
/// `DriverQueue` that `VhostUserFrontend.setUpQueue` laid out) but with fixed, pre-written
/// descriptors: descriptor `i` always describes buffer `i`, and a buffer that comes back used
/// is re-posted by putting its head back in the avail ring. Nothing on the packet path
/// allocates, and kicks and interrupts follow the virtio rules (event idx when negotiated,
/// else the NO_NOTIFY / NO_INTERRUPT flags), as a guest driver would.
struct RingDriver {
    let size: UInt16
    let mask: UInt16
    let descriptors: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    let eventIndex: Bool
    let kickFD: Int32
    let callFD: Int32

    /// Next free slot in the avail ring (what avail->idx becomes on publish).
    private(set) var availIndex: UInt16 = 0
    /// avail->idx as last published (the "old" index of the kick decision).
    private(set) var publishedIndex: UInt16 = 0
    /// Next used entry to consume.
    private(set) var lastUsed: UInt16 = 0
    private(set) var kicks: UInt64 = 0
    private(set) var kicksSuppressed: UInt64 = 0

    init(queue: FrontendQueue, eventIndex: Bool) {
        let driver = queue.driver
        size = driver.size
        mask = driver.size &- 1
        descriptors = driver.arena.pointer(driver.descriptorTable)
        avail = driver.arena.pointer(driver.availRing)
        used = driver.arena.pointer(driver.usedRing)
        self.eventIndex = eventIndex
        kickFD = queue.kick.raw
        callFD = queue.call.raw
        // The DriverQueue may have been offset (setIndices); start where it stands.
        availIndex = driver.availIndex
        publishedIndex = driver.availIndex
        lastUsed = driver.lastUsed
    }

    /// Writes descriptor `index` (a single buffer, no chaining).
    func setDescriptor(_ index: UInt16, address: UInt64, length: UInt32, writable: Bool) {
        let flags: UInt16 = writable ? 2 : 0 // VRING_DESC_F_WRITE
        (descriptors + 16 * Int(index)).storeBytes(
            of: tw_vring_desc(addr: address, len: length, flags: flags, next: 0), as: tw_vring_desc.self)
    }

    /// Changes only the length of descriptor `index`.
    func setLength(_ index: UInt16, _ length: UInt32) {
        (descriptors + 16 * Int(index) + 8).storeBytes(of: length, as: UInt32.self)
    }

    /// Puts `head` in the next avail slot; becomes visible with `publish()`.
    @inline(__always)
    mutating func push(_ head: UInt16) {
        (avail + 4 + 2 * Int(availIndex & mask)).storeBytes(of: head, as: UInt16.self)
        availIndex &+= 1
    }

    /// Publishes what was pushed (store-release of avail->idx) and kicks if the device asked for it.
    @inline(__always)
    mutating func publishAndKick() {
        guard availIndex != publishedIndex else { return }
        let old = publishedIndex
        tw_store_release_u16(avail + 2, availIndex)
        publishedIndex = availIndex
        // The device may be deciding to sleep right now: order our idx store before reading its
        // suppression state (the same full barrier Linux's virtqueue_kick_prepare uses).
        tw_fence_seq_cst()
        let needed: Bool
        if eventIndex {
            let event = tw_load_relaxed_u16(used + 4 + 8 * Int(size))
            needed = RingDriver.needEvent(event: event, new: availIndex, old: old)
        } else {
            needed = tw_load_relaxed_u16(used) & 1 == 0 // VRING_USED_F_NO_NOTIFY
        }
        if needed {
            EventFD.signal(kickFD)
            kicks &+= 1
        } else {
            kicksSuppressed &+= 1
        }
    }

    /// Kicks unconditionally (the first kick after start-up).
    mutating func kick() {
        EventFD.signal(kickFD)
        kicks &+= 1
    }

    /// vring_need_event from the virtio spec.
    @inline(__always)
    static func needEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
        (new &- event &- 1) < (new &- old)
    }

    /// The device's used->idx (load-acquire: the entries before it are complete).
    @inline(__always)
    func usedIndex() -> UInt16 { tw_load_acquire_u16(used + 2) }

    /// True if a used entry is waiting.
    @inline(__always)
    func hasUsed() -> Bool { usedIndex() != lastUsed }

    /// Takes the next used entry (call only when `hasUsed()` or after reading `usedIndex()`).
    @inline(__always)
    mutating func takeUsed() -> (head: UInt16, length: UInt32) {
        let element = (used + 4 + 8 * Int(lastUsed & mask)).loadUnaligned(as: tw_vring_used_elem.self)
        lastUsed &+= 1
        return (UInt16(truncatingIfNeeded: element.id), element.len)
    }

    /// Asks for an interrupt on the next used entry (event idx: used_event = lastUsed; else
    /// clear NO_INTERRUPT), then re-checks: returns true if an entry arrived meanwhile, in
    /// which case the caller must not sleep.
    @inline(__always)
    func armInterrupt() -> Bool {
        if eventIndex {
            tw_store_relaxed_u16(avail + 4 + 2 * Int(size), lastUsed)
        } else {
            tw_store_relaxed_u16(avail, 0)
        }
        tw_fence_seq_cst()
        return hasUsed()
    }

    /// Asks for no interrupts (we poll): NO_INTERRUPT, or a used_event half a ring away.
    func suppressInterrupts() {
        if eventIndex {
            tw_store_relaxed_u16(avail + 4 + 2 * Int(size), lastUsed &+ 0x8000)
        } else {
            tw_store_relaxed_u16(avail, 1) // VRING_AVAIL_F_NO_INTERRUPT
        }
    }

    /// Waits for the call eventfd (or `timeoutMilliseconds`), then resets it.
    func waitForCall(timeoutMilliseconds: Int32) {
        var pfd = pollfd(fd: callFD, events: Int16(POLLIN), revents: 0)
        if poll(&pfd, 1, timeoutMilliseconds) > 0 { EventFD.drain(callFD) }
    }

    /// Number of chains posted and not yet seen used.
    var inFlight: Int { Int(availIndex &- lastUsed) }
}
