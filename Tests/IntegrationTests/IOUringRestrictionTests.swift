import Testing
import Glibc
import CTapwire
@testable import SystemCalls

/// io_uring operations bypass seccomp, so tapwire's rings are restricted when they are made:
/// readv and writev of their fixed files only.
@Suite struct IOUringRestrictionTests {
    /// A ring whose fixed file 0 is the write end of a pipe, and the pipe's read end.
    private func ringOnPipe() throws -> (IOUring, reader: Descriptor, writer: Descriptor) {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let reader = Descriptor(taking: ends[0]), writer = Descriptor(taking: ends[1])
        return (try IOUring(entries: 4, fixedFiles: [writer]), reader, writer)
    }

    /// Prepares a one-byte writev of fixed file 0, lets `alter` change the entry, submits it
    /// and returns the completion's result (bytes, or -errno).
    private func writeOneByte(_ ring: IOUring, _ alter: (inout tw_uring_sqe) -> Void = { _ in }) -> Int32? {
        var byte: UInt8 = 0x5a
        return withUnsafeMutablePointer(to: &byte) { pointer -> Int32? in
            var vector = iovec(iov_base: pointer, iov_len: 1)
            ring.prepareWritev(fileIndex: 0, &vector, count: 1, tag: 1)
            alter(&ring.ring.pointee.sqes[Int((ring.ring.pointee.sq_next &- 1) & ring.ring.pointee.sq_mask)])
            guard ring.submitAndWait(1) == 1 else { return nil }
            return ring.reap()?.result
        }
    }

    @Test func writevOfTheFixedFileIsAllowed() throws {
        let (ring, reader, _) = try ringOnPipe()
        #expect(writeOneByte(ring) == 1)
        var got: UInt8 = 0
        #expect(read(reader.raw, &got, 1) == 1 && got == 0x5a)
    }

    @Test func anOperationOutsideTheListIsRefused() throws {
        let (ring, _, _) = try ringOnPipe()
        // The same entry as an IORING_OP_NOP (opcode 0), which the ring does not allow.
        #expect(writeOneByte(ring) { $0.opcode = 0 } == -EACCES)
    }

    @Test func aDescriptorThatIsNotAFixedFileIsRefused() throws {
        let (ring, _, writer) = try ringOnPipe()
        // A plain descriptor number instead of fixed file 0: IOSQE_FIXED_FILE is required.
        #expect(writeOneByte(ring) { $0.flags = 0; $0.fd = writer.raw } == -EACCES)
    }
}
