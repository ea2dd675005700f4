import CTapwire

/// A fixed-capacity iovec array reused for every chain, so the packet path never allocates.
/// Entries point straight into guest memory.
public final class IOVectorBuffer {
    public let capacity: Int
    public let vectors: UnsafeMutablePointer<iovec>
    public private(set) var count = 0
    public private(set) var totalBytes = 0

    public init(capacity: Int) {
        self.capacity = capacity
        vectors = .allocate(capacity: capacity)
    }

    deinit {
        vectors.deallocate()
    }

    @inline(__always)
    public func removeAll() {
        count = 0
        totalBytes = 0
    }

    /// Drops entries back to `count` (undoing a chain that was appended after it).
    @inline(__always)
    public func truncate(to newCount: Int, totalBytes newTotal: Int) {
        count = newCount
        totalBytes = newTotal
    }

    @inline(__always)
    public func append(_ base: UnsafeMutableRawPointer, _ length: Int) -> Bool {
        guard count < capacity else { return false }
        vectors[count] = iovec(iov_base: base, iov_len: length)
        count += 1
        totalBytes += length
        return true
    }

    /// Copies `bytes` into the start of the described buffer (e.g. a header across segments).
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int, startingAt first: Int = 0) {
        var skip = offset
        var source = 0
        var index = first
        while source < bytes.count && index < count {
            let vector = vectors[index]
            if skip >= vector.iov_len {
                skip -= vector.iov_len
                index += 1
                continue
            }
            let room = vector.iov_len - skip
            let n = min(room, bytes.count - source)
            // SAFETY: the iovec points into a mapped guest region of iov_len bytes; skip + n <= iov_len.
            (vector.iov_base! + skip).copyMemory(from: bytes.baseAddress! + source, byteCount: n)
            source += n
            skip = 0
            index += 1
        }
    }

    /// Copies up to `buffer.count` bytes from the start of the described buffer.
    @discardableResult
    public func read(into buffer: UnsafeMutableRawBufferPointer, startingAt first: Int = 0) -> Int {
        var copied = 0
        var index = first
        while copied < buffer.count && index < count {
            let vector = vectors[index]
            let n = min(vector.iov_len, buffer.count - copied)
            // SAFETY: the iovec points into a mapped guest region of iov_len bytes.
            (buffer.baseAddress! + copied).copyMemory(from: vector.iov_base!, byteCount: n)
            copied += n
            index += 1
        }
        return copied
    }
}
