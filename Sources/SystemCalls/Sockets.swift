import Glibc
import CTapwire

/// Unix stream sockets with descriptor passing, as vhost-user needs.
public enum UnixSocket {
    /// Binds and listens on `path`. An existing socket file there is replaced only if nobody
    /// answers on it, so two backends never steal each other's socket.
    public static func listen(path: String, backlog: Int32 = 1) throws(SystemError) -> Descriptor {
        let fd = Descriptor(taking: try retryingInterrupts("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        var address = sockaddr_un()
        let length = tw_sockaddr_un(&address, path)
        guard length > 0 else { throw SystemError("socket path '\(path)' is too long", errno: ENAMETOOLONG) }
        if access(path, F_OK) == 0 {
            if (try? connect(path: path)) != nil {
                throw SystemError("bind \(path): another process is listening there", errno: EADDRINUSE)
            }
            unlink(path)
        }
        _ = try retryingInterrupts("bind \(path)") {
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.raw, $0, socklen_t(length)) }
            }
        }
        _ = try retryingInterrupts("listen") { Glibc.listen(fd.raw, backlog) }
        return fd
    }

    public static func accept(_ listener: Int32) throws(SystemError) -> Descriptor {
        let fd = try retryingInterrupts("accept4") { tw_accept_cloexec(listener) }
        return Descriptor(taking: fd)
    }

    public static func connect(path: String) throws(SystemError) -> Descriptor {
        let fd = Descriptor(taking: try retryingInterrupts("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        var address = sockaddr_un()
        let length = tw_sockaddr_un(&address, path)
        guard length > 0 else { throw SystemError("socket path '\(path)' is too long", errno: ENAMETOOLONG) }
        _ = try retryingInterrupts("connect \(path)") {
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.raw, $0, socklen_t(length)) }
            }
        }
        return fd
    }

    /// What a failed `connect(path:)` means for a client that retries: nil while retrying can
    /// fix it (no socket there yet, or nobody listening on it yet); otherwise what an operator
    /// has to change, since the frontend will not change it.
    public static func connectFailureNeedsOperator(_ error: SystemError, path: String) -> String? {
        switch error.errno {
        case ENOENT, ECONNREFUSED, EAGAIN:
            var st = stat()
            if stat(path, &st) == 0 && st.st_mode & S_IFMT != S_IFSOCK {
                return "\(path) exists but is not a socket: remove it, or point --socket-path at the frontend's socket"
            }
            return nil
        case EACCES, EPERM:
            return "This process (uid \(getuid()), gid \(getgid()), no capabilities) may not write to the socket or search its directory: "
                + "run tapwire with --user USER:GROUP whose user or group owns the socket (for libvirt's mode='server': its group libvirt-qemu), "
                + "or let the frontend create the socket with wider permissions"
        case ENOTDIR, ELOOP, ENAMETOOLONG:
            return "\(path) cannot name a socket: fix --socket-path"
        default:
            return nil
        }
    }

    public static func pair() throws(SystemError) -> (Descriptor, Descriptor) {
        var fds: [Int32] = [-1, -1]
        _ = try retryingInterrupts("socketpair") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        return (Descriptor(taking: fds[0]), Descriptor(taking: fds[1]))
    }

    /// A stalled peer cannot hold a half-sent message forever.
    public static func setReceiveTimeout(_ fd: Int32, milliseconds: Int) throws(SystemError) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        _ = try retryingInterrupts("setsockopt(SO_RCVTIMEO)") {
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Sends all of `bytes` with `fds` attached to the first chunk.
    public static func send(_ fd: Int32, bytes: UnsafeRawBufferPointer, fds: [Int32] = []) throws(SystemError) {
        var offset = 0
        var pending = fds
        while offset < bytes.count {
            let n = pending.withUnsafeBufferPointer { fdBuffer in
                tw_send_with_fds(fd, bytes.baseAddress! + offset, bytes.count - offset, fdBuffer.baseAddress, Int32(fdBuffer.count))
            }
            if n < 0 { throw SystemError("sendmsg", errno: Glibc.errno) }
            offset += n
            pending = []
        }
    }

    public struct Received {
        public var count: Int
        public var descriptors: [Descriptor]
        public var descriptorsTruncated: Bool
    }

    /// One recvmsg; `count` 0 means the peer closed. Received fds are owned by the result.
    public static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Received {
        var raw = [Int32](repeating: -1, count: Int(TW_MAX_PASSED_FDS))
        var count: Int32 = 0
        var truncated: Int32 = 0
        let n = raw.withUnsafeMutableBufferPointer { fdBuffer in
            tw_recv_with_fds(fd, buffer.baseAddress, buffer.count, fdBuffer.baseAddress, &count, &truncated)
        }
        if n < 0 { throw SystemError("recvmsg", errno: Glibc.errno) }
        let owned = raw.prefix(Int(count)).map { Descriptor(taking: $0) }
        return Received(count: n, descriptors: owned, descriptorsTruncated: truncated != 0)
    }

    /// Reads exactly `buffer.count` bytes (no descriptors expected); false if the peer closed first.
    public static func receiveExactly(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Bool {
        var offset = 0
        while offset < buffer.count {
            let n = recv(fd, buffer.baseAddress! + offset, buffer.count - offset, 0)
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError("recv", errno: Glibc.errno)
            }
            if n == 0 { return false }
            offset += n
        }
        return true
    }
}
