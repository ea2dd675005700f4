import Glibc
import CTapwire
import SystemCalls

/// One vhost-user stream: header first (with any descriptors), then exactly `size` payload bytes.
public final class VhostUserConnection {
    public let socket: Descriptor
    private var payload = [UInt8](repeating: 0, count: Int(VhostUserLimits.maxPayload))

    public init(socket: Descriptor) {
        self.socket = socket
    }

    public enum ReceiveResult {
        case message(MessageHeader, VhostUserMessage)
        /// Well-framed but refused (unknown request, bad payload): the stream is still in step.
        case refused(MessageHeader, ProtocolError)
        case closed
    }

    public enum ConnectionError: Error, CustomStringConvertible {
        case protocolViolation(ProtocolError)
        case system(SystemError)

        public var description: String {
            switch self {
            case .protocolViolation(let e): return "\(e)"
            case .system(let e): return "\(e)"
            }
        }
    }

    /// Reads one message. Descriptors that arrive are owned by the result and closed with it.
    /// Errors that leave the stream out of step (bad header, short read) are thrown: the caller
    /// hangs up.
    public func receive() throws(ConnectionError) -> ReceiveResult {
        var headerBytes = [UInt8](repeating: 0, count: VhostUserLimits.headerSize)
        let first: UnixSocket.Received
        do {
            first = try headerBytes.withUnsafeMutableBytes { buffer throws(SystemError) in
                try UnixSocket.receive(socket.raw, into: buffer)
            }
        } catch { throw .system(asSystemError(error)) }
        if first.count == 0 { return .closed }
        if first.descriptorsTruncated { throw .protocolViolation(.tooManyDescriptors) }
        if first.count < VhostUserLimits.headerSize {
            let complete: Bool
            do {
                complete = try headerBytes.withUnsafeMutableBytes { buffer throws(SystemError) in
                    try UnixSocket.receiveExactly(socket.raw, into: UnsafeMutableRawBufferPointer(rebasing: buffer[first.count...]))
                }
            } catch { throw .system(asSystemError(error)) }
            guard complete else { throw .protocolViolation(.truncatedHeader(got: first.count)) }
        }
        let header = headerBytes.withUnsafeBytes { MessageHeader(bytes: $0) }
        do { try header.validateAsRequest() } catch { throw .protocolViolation(error) }
        let size = Int(header.size)
        if size > 0 {
            let complete: Bool
            do {
                complete = try payload.withUnsafeMutableBytes { buffer throws(SystemError) in
                    try UnixSocket.receiveExactly(socket.raw, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<size]))
                }
            } catch { throw .system(asSystemError(error)) }
            guard complete else { throw .protocolViolation(.peerClosedMidMessage) }
        }
        do {
            let message = try payload.withUnsafeBytes { buffer throws(ProtocolError) in
                try MessageDecoder.decode(header: header, payload: UnsafeRawBufferPointer(rebasing: buffer[0..<size]),
                                          descriptors: first.descriptors)
            }
            return .message(header, message)
        } catch {
            return .refused(header, (error as? ProtocolError) ?? .unknownRequest(header.request))
        }
    }

    public func send(_ bytes: [UInt8], descriptors: [Int32] = []) throws(SystemError) {
        do {
            try bytes.withUnsafeBytes { buffer in try UnixSocket.send(socket.raw, bytes: buffer, fds: descriptors) }
        } catch { throw asSystemError(error) }
    }

    /// Sends a reply with the REPLY flag and version 1.
    public func reply(to header: MessageHeader, payload: [UInt8]) throws(SystemError) {
        try send(MessageEncoder.reply(to: header.request, payload: payload))
    }
}

/// Closures such as withUnsafeBytes rethrow untyped errors; recover the typed one.
func asSystemError(_ error: any Error) -> SystemError {
    (error as? SystemError) ?? SystemError("\(error)", errno: EIO)
}
