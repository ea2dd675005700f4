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

    /// Makes the first `length` bytes of the buffer described by the entries from `first` on
    /// come from `copy` instead: one entry for the copy, then the rest of what it covered.
    /// Returns false (changing nothing) when the one entry more this may take does not fit.
    public func replacePrefix(from first: Int, with copy: UnsafeMutableRawPointer, length: Int) -> Bool {
        var index = first
        var covered = length
        while index < count && covered >= vectors[index].iov_len {
            covered -= vectors[index].iov_len
            index += 1
        }
        // Entries first..<index now come from the copy, and `covered` bytes of entry `index`.
        let shift = 1 - (index - first)
        if shift > 0 && count >= capacity { return false }
        if shift != 0 && index < count {
            // SAFETY: source index..<count and destination index+shift..<count+shift both lie
            // within the capacity (checked above when growing); copyMemory is a memmove.
            UnsafeMutableRawPointer(vectors + index + shift).copyMemory(from: vectors + index,
                                                                       byteCount: (count - index) * MemoryLayout<iovec>.stride)
        }
        count += shift
        vectors[first] = iovec(iov_base: copy, iov_len: length)
        if covered > 0 && index + shift < count {
            // SAFETY: covered < that entry's iov_len (the loop stopped inside it).
            vectors[index + shift].iov_base! += covered
            vectors[index + shift].iov_len -= covered
        }
        return true
    }

    /// Copies `byteCount` bytes from the buffer described by entries `source..<source+sourceCount`
    /// into the one described by `destination..<destination+destinationCount`; returns how many
    /// fit. The two may overlap (a guest can point two chains at the same memory).
    public func copy(_ byteCount: Int, from source: Int, count sourceCount: Int, to destination: Int, count destinationCount: Int) -> Int {
        var copied = 0
        var s = source, sOffset = 0
        var d = destination, dOffset = 0
        while copied < byteCount && s < source + sourceCount && d < destination + destinationCount {
            let from = vectors[s], to = vectors[d]
            let n = min(byteCount - copied, from.iov_len - sOffset, to.iov_len - dOffset)
            if n > 0 {
                // SAFETY: both iovecs point into mapped guest regions of iov_len bytes and the
                // offsets stay below iov_len; copyMemory is a memmove, so overlap is fine.
                (to.iov_base! + dOffset).copyMemory(from: from.iov_base! + sOffset, byteCount: n)
            }
            copied += n
            sOffset += n
            dOffset += n
            if sOffset == from.iov_len { s += 1; sOffset = 0 }
            if dOffset == to.iov_len { d += 1; dOffset = 0 }
        }
        return copied
    }
}
