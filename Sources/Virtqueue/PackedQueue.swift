import CTapwire
import GuestMemory

/// The device side of one packed virtqueue (VIRTIO_F_RING_PACKED) over guest memory.
///
/// One ring of descriptors serves both directions: the driver makes a descriptor available by
/// setting its AVAIL bit to the driver's wrap counter and USED to the inverse; the device marks
/// it used by setting both to its own wrap counter. A chain of N descriptors takes N ring slots
/// and comes back as one used descriptor with the buffer id of its last descriptor; the next
/// used descriptor goes N slots further on (so, returned in order, each chain's used descriptor
/// lands on its first slot).
///
/// Ordering (virtio 1.1+, "Packed Virtqueues"): the first descriptor's flags are loaded with
/// acquire before anything else of the chain is read (the driver makes it available last);
/// used descriptors get id and len first, then their flags after a release fence, the batch's
/// first descriptor last with a release store, so the driver, which polls only that one, sees
/// the batch whole; a full fence separates publishing (or re-enabling kicks) from reading the
/// driver's event area.
///
/// What it checks, as `SplitQueue` does: every buffer and indirect table inside guest memory,
/// chains cut by counting (never longer than the slots the driver could have made available),
/// one direction per chain (and never readable after writable), indirect tables only when
/// negotiated, alone in their chain, never nested, of a non-zero multiple of 16 bytes; and,
/// since the buffer id decides where the driver looks next, ids below the ring size and not
/// already held. Descriptors are copied out of guest memory once; nothing is used in place.
public final class PackedQueue {
    public let size: UInt16
    public let memory: GuestMemoryMap
    public let indirectAllowed: Bool
    public let eventIndex: Bool
    @usableFromInline let ring: PackedRingPointers

    /// The next descriptor to look at, and the driver wrap counter expected there (GET_VRING_BASE's low half).
    public private(set) var nextAvail: PackedRingPosition
    /// Where the next used descriptor goes, with the device's wrap counter (GET_VRING_BASE's high half).
    public private(set) var nextUsed: PackedRingPosition

    /// Ring slots the device holds: taken by popChain and not yet published used. The driver
    /// cannot make these available again, so at most `size`.
    private var heldSlots: Int
    /// Slots covered by the used descriptors added since the last publish.
    private var unpublishedSlots = 0
    /// The first slot `addUsed` wrote since the last publish (its flags are stored last).
    private var batchHead = PackedRingPosition.start
    private var batchHeadFlags: UInt16 = 0
    /// The other used descriptors of the batch: their index and the flags they get at publish.
    private let batchIndices: UnsafeMutablePointer<UInt16>
    private let batchFlags: UnsafeMutablePointer<UInt16>
    private var batchCount = 0

    /// Per buffer id: how many ring slots its chain took, 0 when the id is not held.
    private let chainSlots: UnsafeMutablePointer<UInt16>
    /// Buffer ids in the order they were popped (a ring of `size`), for `undoPop`.
    private let popOrder: UnsafeMutablePointer<UInt16>
    private var popOrderNext = 0

    /// Used position and slot count at the last publish and at the last `needsInterrupt()`.
    private var publishedUsed: PackedRingPosition
    private var publishedSlots: UInt64 = 0
    private var signalledSlots: UInt64 = 0
    /// False until the first interrupt: that one goes out whatever the driver's event area says
    /// (after a reconnect it may be stale).
    private var signalledUsedValid = false

    /// What the device event area holds (written only when it changes: the line is shared).
    private var kickMode: PackedEventMode?
    private var kickPosition: UInt16?

    /// While a live migration logs dirty pages (VHOST_F_LOG_ALL): the log, for every byte the
    /// device writes into guest memory. Ring writes are logged by their own guest address:
    /// vhost-user's log address names only the device area, and used descriptors land in the
    /// descriptor ring.
    public var dirtyLog: DirtyLog?

    /// `base` as SET_VRING_BASE gave it (`PackedVringBase.isValid(size:)` checked by the caller);
    /// slots between its used and avail positions count as held by the device.
    public init(size: UInt16, ring: PackedRingPointers, memory: GuestMemoryMap, base: PackedVringBase,
                indirectAllowed: Bool, eventIndex: Bool) {
        precondition(PackedRing.isValidSize(UInt32(size)), "queue size validated by the caller")
        precondition(base.isValid(size: size), "vring base validated by the caller")
        self.size = size
        self.ring = ring
        self.memory = memory
        self.indirectAllowed = indirectAllowed
        self.eventIndex = eventIndex
        nextAvail = base.avail
        nextUsed = base.used
        publishedUsed = base.used
        heldSlots = base.used.distance(to: base.avail, size: size)
        let count = Int(size)
        batchIndices = .allocate(capacity: count)
        batchFlags = .allocate(capacity: count)
        chainSlots = .allocate(capacity: count)
        chainSlots.initialize(repeating: 0, count: count)
        popOrder = .allocate(capacity: count)
        popOrder.initialize(repeating: 0, count: count)
    }

    deinit {
        batchIndices.deallocate()
        batchFlags.deallocate()
        chainSlots.deallocate()
        popOrder.deallocate()
    }

    /// Resolves and checks the ring addresses, which SET_VRING_ADDR gives as frontend virtual
    /// addresses in its descriptor, avail (driver area) and used (device area) fields.
    public static func resolveRing(memory: GuestMemoryMap, size: UInt16, descriptors: UInt64, driverArea: UInt64,
                                   deviceArea: UInt64) -> Result<PackedRingPointers, RingAddressError> {
        guard descriptors % PackedRing.descriptorAlignment == 0, driverArea % PackedRing.eventAreaAlignment == 0,
              deviceArea % PackedRing.eventAreaAlignment == 0 else { return .failure(.misalignedPacked) }
        guard let d = memory.hostPointer(userspace: descriptors, length: PackedRing.descriptorRingBytes(size)) else {
            return .failure(.outsideMemory(part: "descriptor ring", address: descriptors))
        }
        guard let driver = memory.hostPointer(userspace: driverArea, length: UInt64(PackedRing.eventAreaSize)) else {
            return .failure(.outsideMemory(part: "driver event area", address: driverArea))
        }
        guard let device = memory.hostPointer(userspace: deviceArea, length: UInt64(PackedRing.eventAreaSize)) else {
            return .failure(.outsideMemory(part: "device event area", address: deviceArea))
        }
        return .success(PackedRingPointers(descriptors: d, driverEvent: driver, deviceEvent: device))
    }

    /// Where a frontend resumes after GET_VRING_BASE (call `publishUsed()` first).
    public var base: PackedVringBase { PackedVringBase(avail: nextAvail, used: nextUsed) }

    @inline(__always)
    func slot(_ index: UInt16) -> UnsafeMutableRawPointer {
        ring.descriptors + PackedRing.descriptorSize * Int(index)
    }

    // MARK: - Driver's descriptors

    /// Whether the driver has made the next descriptor available.
    @inline(__always)
    public func hasPending() -> Bool {
        guard heldSlots < Int(size) else { return false }
        // SAFETY: the descriptor ring was bounds-checked for `size` descriptors at resolveRing;
        // nextAvail.index < size.
        let flags = tw_load_acquire_u16(slot(nextAvail.index) + PackedRing.descriptorFlagsOffset)
        return PackedRing.isAvailable(flags, wrapCounter: nextAvail.wrapCounter)
    }

    // MARK: - Consuming chains

    /// Takes the next available chain and describes its buffers in `buffers` (appended after
    /// what is already there). Returns nil when nothing is available. A chain that breaks the
    /// rules is consumed and reported as `.refused`, its buffer id in `head`, so the caller
    /// returns it with length 0. A chain whose end or id cannot be trusted fails the queue.
    @inline(__always)
    public func popChain(into buffers: IOVectorBuffer, writable: Bool, maxBytes: UInt64) throws(QueueFault) -> PoppedChain? {
        let free = Int(size) - heldSlots
        guard free > 0 else { return nil }
        // SAFETY: the descriptor ring was bounds-checked for `size` descriptors; nextAvail.index < size.
        let flags = tw_load_acquire_u16(slot(nextAvail.index) + PackedRing.descriptorFlagsOffset)
        guard PackedRing.isAvailable(flags, wrapCounter: nextAvail.wrapCounter) else { return nil }
        let startCount = buffers.count
        let startBytes = buffers.totalBytes
        let walk: ChainWalk
        do {
            walk = try walkChain(firstFlags: flags, free: free, into: buffers, writable: writable, maxBytes: maxBytes)
        } catch {
            buffers.truncate(to: startCount, totalBytes: startBytes)
            throw error
        }
        chainSlots[Int(walk.id)] = UInt16(walk.slots)
        popOrder[popOrderNext] = walk.id
        popOrderNext = popOrderNext + 1 == Int(size) ? 0 : popOrderNext + 1
        nextAvail = nextAvail.advanced(by: UInt16(walk.slots), size: size)
        heldSlots += walk.slots
        if let fault = walk.fault {
            buffers.truncate(to: startCount, totalBytes: startBytes)
            return PoppedChain(head: walk.id, bytes: 0, fault: fault, firstVector: startCount)
        }
        return PoppedChain(head: walk.id, bytes: walk.bytes, fault: nil, firstVector: startCount)
    }

    /// Gives back the last `count` chains taken and not yet added used (e.g. the TAP had
    /// nothing to read after all).
    @inline(__always)
    public func undoPop(_ count: UInt16 = 1) {
        for _ in 0..<count {
            popOrderNext = popOrderNext == 0 ? Int(size) - 1 : popOrderNext - 1
            let id = Int(popOrder[popOrderNext])
            let slots = chainSlots[id]
            precondition(slots != 0, "undoPop of a chain that was already added used")
            chainSlots[id] = 0
            nextAvail = nextAvail.retreated(by: slots, size: size)
            heldSlots -= Int(slots)
        }
    }

    @usableFromInline
    struct ChainWalk {
        var id: UInt16
        var slots: Int
        var bytes: UInt64
        var fault: ChainFault?
    }

    /// Walks the chain starting at `nextAvail` to its last descriptor (for the id and the slot
    /// count), describing its buffers until the first rule it breaks.
    @usableFromInline
    func walkChain(firstFlags: UInt16, free: Int, into buffers: IOVectorBuffer, writable: Bool,
                   maxBytes: UInt64) throws(QueueFault) -> ChainWalk {
        var position = nextAvail
        var flags = firstFlags
        var walk = ChainWalk(id: 0, slots: 0, bytes: 0, fault: nil)
        var sawWritable = false
        while true {
            walk.slots += 1
            // SAFETY: position.index < size (advanced(by:size:) keeps it so) and the ring was
            // bounds-checked for `size` descriptors; the copy is what gets checked and used.
            var descriptor = slot(position.index).loadUnaligned(as: tw_vring_packed_desc.self)
            if walk.slots == 1 {
                // The acquire-loaded flags, not a second read the guest may have changed since.
                descriptor.flags = flags
            } else {
                flags = descriptor.flags
                guard PackedRing.isAvailable(flags, wrapCounter: position.wrapCounter) else {
                    throw .incompleteChain(index: position.index)
                }
            }
            if walk.fault == nil {
                if flags & Ring.descriptorIndirect != 0 {
                    if !indirectAllowed {
                        walk.fault = .indirectNotNegotiated
                    } else if flags & Ring.descriptorNext != 0 {
                        walk.fault = .indirectWithNext
                    } else if walk.slots > 1 {
                        walk.fault = .indirectInChain
                    } else {
                        walk.fault = walkIndirect(descriptor, into: buffers, writable: writable, maxBytes: maxBytes,
                                                  total: &walk.bytes)
                    }
                } else {
                    walk.fault = appendBuffer(descriptor, into: buffers, writable: writable, maxBytes: maxBytes,
                                              total: &walk.bytes, sawWritable: &sawWritable)
                }
            }
            guard flags & Ring.descriptorNext != 0 else {
                walk.id = descriptor.id
                break
            }
            guard walk.slots < free else { throw .chainLongerThanRing(limit: free) }
            position = position.advanced(by: 1, size: size)
        }
        guard walk.id < size else { throw .bufferIDOutOfRange(id: walk.id, size: size) }
        guard chainSlots[Int(walk.id)] == 0 else { throw .bufferIDInUse(id: walk.id) }
        return walk
    }

    /// An indirect table's descriptors, all `len / 16` of them in order (NEXT and the ids in a
    /// table are reserved; the device ignores them).
    @inline(__always)
    func walkIndirect(_ table: tw_vring_packed_desc, into buffers: IOVectorBuffer, writable: Bool, maxBytes: UInt64,
                      total: inout UInt64) -> ChainFault? {
        let length = table.len
        let entrySize = UInt32(PackedRing.descriptorSize)
        guard length > 0, length % entrySize == 0, length / entrySize <= UInt32(PackedRing.maxSize) else {
            return .indirectBadLength(length)
        }
        guard let base = memory.hostPointer(guestPhysical: table.addr, length: UInt64(length)) else {
            return .indirectOutsideMemory(address: table.addr, length: length)
        }
        var sawWritable = false
        for entry in 0..<Int(length / entrySize) {
            // SAFETY: entry < len / 16 and hostPointer checked all `len` bytes of the table.
            let descriptor = (base + PackedRing.descriptorSize * entry).loadUnaligned(as: tw_vring_packed_desc.self)
            guard descriptor.flags & Ring.descriptorIndirect == 0 else { return .nestedIndirect }
            if let fault = appendBuffer(descriptor, into: buffers, writable: writable, maxBytes: maxBytes,
                                        total: &total, sawWritable: &sawWritable) {
                return fault
            }
        }
        return nil
    }

    /// One direct descriptor's buffer, checked for direction, size and memory.
    @inline(__always)
    func appendBuffer(_ descriptor: tw_vring_packed_desc, into buffers: IOVectorBuffer, writable: Bool, maxBytes: UInt64,
                      total: inout UInt64, sawWritable: inout Bool) -> ChainFault? {
        let isWritable = descriptor.flags & Ring.descriptorWrite != 0
        guard isWritable || !sawWritable else { return .readableAfterWritable }
        sawWritable = isWritable
        guard isWritable == writable else { return .wrongDirection(expectedWritable: writable) }
        guard descriptor.len > 0 else { return nil }
        total += UInt64(descriptor.len)
        guard total <= maxBytes else { return .tooLarge(bytes: total) }
        var outOfRoom = false
        let inside = memory.forEachHostSegment(guestPhysical: descriptor.addr, length: UInt64(descriptor.len)) { base, count in
            if buffers.append(base, count) { return true }
            outOfRoom = true
            return false
        }
        if outOfRoom { return .tooManySegments(limit: buffers.capacity) }
        guard inside else { return .bufferOutsideMemory(address: descriptor.addr, length: descriptor.len) }
        return nil
    }

    // MARK: - Returning chains

    /// Records a finished chain by its buffer id (`PoppedChain.head`): its id and length go into
    /// the ring now, its flags at `publishUsed()`, when the guest sees it.
    @inline(__always)
    public func addUsed(head: UInt16, length: UInt32) {
        precondition(head < size && chainSlots[Int(head)] != 0, "addUsed for a buffer id that is not held")
        let slots = chainSlots[Int(head)]
        chainSlots[Int(head)] = 0
        let used = slot(nextUsed.index)
        // SAFETY: nextUsed.index < size and the ring was bounds-checked for `size` descriptors;
        // the slot is one the device holds (popped, not yet published), so the driver leaves it alone.
        used.storeBytes(of: length, toByteOffset: PackedRing.descriptorLengthOffset, as: UInt32.self)
        used.storeBytes(of: head, toByteOffset: PackedRing.descriptorIDOffset, as: UInt16.self)
        // WRITE in a used descriptor says that len bytes were written.
        let flags = PackedRing.usedBits(wrapCounter: nextUsed.wrapCounter) | (length > 0 ? Ring.descriptorWrite : 0)
        if unpublishedSlots == 0 {
            batchHead = nextUsed
            batchHeadFlags = flags
        } else {
            // batchCount < size: every entry holds at least one of the at most `size` held slots.
            batchIndices[batchCount] = nextUsed.index
            batchFlags[batchCount] = flags
            batchCount += 1
        }
        unpublishedSlots += Int(slots)
        if let dirtyLog { dirtyLog.mark(host: used, length: PackedRing.descriptorSize, in: memory) }
        nextUsed = nextUsed.advanced(by: slots, size: size)
    }

    /// Makes every used descriptor added so far visible to the guest: the batch's flags after
    /// a release fence, its first descriptor's last with a release store.
    @inline(__always)
    public func publishUsed() {
        guard unpublishedSlots > 0 else { return }
        tw_fence_release()
        for entry in 0..<batchCount {
            // SAFETY: each index was nextUsed.index (< size) when addUsed wrote that slot.
            tw_store_relaxed_u16(slot(batchIndices[entry]) + PackedRing.descriptorFlagsOffset, batchFlags[entry])
        }
        // SAFETY: as above, for the batch's first slot.
        tw_store_release_u16(slot(batchHead.index) + PackedRing.descriptorFlagsOffset, batchHeadFlags)
        heldSlots -= unpublishedSlots
        publishedSlots &+= UInt64(unpublishedSlots)
        unpublishedSlots = 0
        batchCount = 0
        publishedUsed = nextUsed
    }

    // MARK: - Interrupts (the driver's event area)

    /// Whether the guest asked to be interrupted for what was published since the last signal.
    /// Call after `publishUsed()`; records the signal as sent when it returns true.
    @inline(__always)
    public func needsInterrupt() -> Bool {
        let wanted = wantsInterrupt()
        signalledSlots = publishedSlots
        if wanted { signalledUsedValid = true }
        return wanted
    }

    /// The interrupt eventfd changed: what was signalled on the old one may never have reached
    /// the guest, so the next interrupt goes out whatever the driver's event area says.
    public func forgetSignalledState() {
        signalledUsedValid = false
    }

    /// `needsInterrupt()` without recording anything: for a caller that may hold the
    /// interrupt back and ask again later (the range since the last signal then still counts).
    @inline(__always)
    public func wantsInterrupt() -> Bool {
        tw_fence_seq_cst()
        // Nothing published since the last ask (or since the start): nothing to tell.
        let window = publishedSlots &- signalledSlots
        if window == 0 { return false }
        // SAFETY: the driver event area was bounds-checked for its 4 bytes at resolveRing.
        let mode = tw_load_relaxed_u16(ring.driverEvent + PackedRing.eventFlagsOffset) & PackedRing.eventModeMask
        // DESC counts only with EVENT_IDX; the reserved mode 3 asks like ENABLE.
        guard eventIndex, mode == PackedEventMode.descriptor.rawValue else { return mode != PackedEventMode.disable.rawValue }
        guard signalledUsedValid else { return true }
        // More than two laps since the last signal: every position was passed.
        let laps = 2 * UInt64(size)
        if window >= laps { return true }
        // SAFETY: as above.
        let event = PackedRingPosition(encoded: tw_load_relaxed_u16(ring.driverEvent + PackedRing.eventOffWrapOffset))
        // The event descriptor was used in this window when it lies in [old, new): `behind`
        // descriptors before the new used position, 1 ... window.
        let behind = UInt64(event.distance(to: publishedUsed, size: size)) % laps
        return behind != 0 && behind <= window
    }

    // MARK: - Kicks (the device's event area)

    /// Asks the driver for kicks again (with EVENT_IDX: for the descriptor at our position) and
    /// reports whether more work slipped in meanwhile (then the caller keeps going instead of sleeping).
    @inline(__always)
    public func enableKicks() throws(QueueFault) -> Bool {
        setKickMode(eventIndex ? .descriptor : .enable)
        tw_fence_seq_cst()
        return hasPending()
    }

    /// Asks the driver not to kick while we are polling anyway.
    @inline(__always)
    public func disableKicks() {
        setKickMode(.disable)
    }

    /// Keeps the driver's kick point at our position after a batch (EVENT_IDX only).
    @inline(__always)
    public func updateAvailEvent() {
        if eventIndex { setKickMode(.descriptor) }
    }

    /// Writes the device event area where it changes: off_wrap first (for `.descriptor`), then
    /// the mode with release, so a driver that sees DESC sees the position with it.
    @inline(__always)
    func setKickMode(_ mode: PackedEventMode) {
        var changed = false
        if mode == .descriptor && kickPosition != nextAvail.encoded {
            kickPosition = nextAvail.encoded
            // SAFETY: the device event area was bounds-checked for its 4 bytes at resolveRing.
            tw_store_relaxed_u16(ring.deviceEvent + PackedRing.eventOffWrapOffset, nextAvail.encoded)
            changed = true
        }
        if kickMode != mode {
            kickMode = mode
            // SAFETY: as above.
            tw_store_release_u16(ring.deviceEvent + PackedRing.eventFlagsOffset, mode.rawValue)
            changed = true
        }
        if changed, let dirtyLog {
            dirtyLog.mark(host: ring.deviceEvent, length: PackedRing.eventAreaSize, in: memory)
        }
    }
}
