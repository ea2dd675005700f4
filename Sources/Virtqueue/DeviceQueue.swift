import GuestMemory

/// What the datapath asks of a virtqueue, whichever its layout: `SplitQueue` and `PackedQueue`.
/// Both are final classes, so code generic over `some DeviceQueue` is specialised per layout
/// and calls them directly; nothing on the packet path goes through an existential.
///
/// `PoppedChain.head` is what `addUsed(head:length:)` takes back: the head descriptor's index
/// for a split ring, the buffer id for a packed one.
public protocol DeviceQueue: AnyObject {
    /// Where the device stands in the ring: a free-running 16-bit index for a split ring, a
    /// `PackedRingPosition` for a packed one.
    associatedtype Position: Equatable & Sendable

    var size: UInt16 { get }
    var memory: GuestMemoryMap { get }
    var eventIndex: Bool { get }
    /// The next descriptor the device takes (GET_VRING_BASE).
    var nextAvail: Position { get }
    /// Where the next used entry goes.
    var nextUsed: Position { get }
    var dirtyLog: DirtyLog? { get set }

    /// Whether the driver has made a chain available that the device has not taken.
    func hasPending() throws(QueueFault) -> Bool
    func popChain(into buffers: IOVectorBuffer, writable: Bool, maxBytes: UInt64) throws(QueueFault) -> PoppedChain?
    func undoPop(_ count: UInt16)
    func addUsed(head: UInt16, length: UInt32)
    func publishUsed()
    func needsInterrupt() -> Bool
    func wantsInterrupt() -> Bool
    func forgetSignalledState()
    func enableKicks() throws(QueueFault) -> Bool
    func disableKicks()
    func updateAvailEvent()
}

extension SplitQueue: DeviceQueue {
    @inline(__always)
    public func hasPending() throws(QueueFault) -> Bool { try pendingCount() > 0 }
}

extension PackedQueue: DeviceQueue {}
