import Glibc
import CTapwire

/// Owns one file descriptor and closes it exactly once, when the owner goes away or on `close()`.
/// A class rather than a ~Copyable struct so it can sit in optionals and arrays of queue state;
/// the packet path reads `raw` once and keeps the integer.
public final class Descriptor: @unchecked Sendable, CustomStringConvertible {
    // @unchecked Sendable: `raw` is only changed by close()/take(), which the owning thread calls.
    public private(set) var raw: Int32

    public init(taking raw: Int32) {
        self.raw = raw
    }

    deinit {
        if raw >= 0 { Glibc.close(raw) }
    }

    public var isOpen: Bool { raw >= 0 }

    public func close() {
        if raw >= 0 {
            Glibc.close(raw)
            raw = -1
        }
    }

    /// Gives up ownership without closing (e.g. to hand the fd to another owner).
    public func take() -> Int32 {
        let fd = raw
        raw = -1
        return fd
    }

    public var description: String { "fd \(raw)" }

    public func setNonBlocking(_ on: Bool = true) throws(SystemError) {
        let flags = try retryingInterrupts("fcntl(F_GETFL)") { tw_fcntl_getfl(raw) }
        let wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK)
        if wanted != flags {
            _ = try retryingInterrupts("fcntl(F_SETFL)") { tw_fcntl_setfl(raw, wanted) }
        }
    }

    /// Size of the file behind the descriptor (fstat st_size).
    public func fileSize() throws(SystemError) -> UInt64 {
        var st = stat()
        _ = try retryingInterrupts("fstat") { fstat(raw, &st) }
        return UInt64(st.st_size)
    }
}

/// Number of open descriptors of this process (for leak checks in tests and the soak tool).
public func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count - 3 // ".", ".." and the directory's own descriptor
}
