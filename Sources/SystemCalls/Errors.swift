import Glibc

/// An errno value with the libc call that produced it, so a log line says what failed.
public struct SystemError: Error, Equatable, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call): \(String(cString: strerror(errno))) (errno \(errno))"
    }

    public var isWouldBlock: Bool { errno == EAGAIN || errno == EWOULDBLOCK }
}

/// Runs a libc call that reports failure as -1, retrying EINTR once here so no caller has to.
@inline(__always)
public func retryingInterrupts<T: FixedWidthInteger>(_ call: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemError(call, errno: code)
    }
}

/// Hot-path variant: no error value is built; returns the result or `-errno`.
@inline(__always)
public func resultOrNegativeErrno(_ body: () -> Int) -> Int {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        return -Int(code)
    }
}
