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

    /// Submits what is prepared and returns the completion's result (bytes, or -errno).
    private func run(_ ring: IOUring) -> Int32? {
        guard ring.submitAndWait(1) == 1 else { return nil }
        return ring.reap()?.result
    }

    @Test func writevOfTheFixedFileIsAllowed() throws {
        let (ring, reader, _) = try ringOnPipe()
        var byte: UInt8 = 0x5a
        let result = withUnsafeMutablePointer(to: &byte) { pointer -> Int32? in
            var vector = iovec(iov_base: pointer, iov_len: 1)
            ring.prepareWritev(fileIndex: 0, &vector, count: 1, tag: 1)
            return run(ring)
        }
        #expect(result == 1)
        var got: UInt8 = 0
        #expect(read(reader.raw, &got, 1) == 1 && got == 0x5a)
    }

    @Test func anOperationOutsideTheListIsRefused() throws {
        let (ring, _, _) = try ringOnPipe()
        var byte: UInt8 = 0
        let result = withUnsafeMutablePointer(to: &byte) { pointer -> Int32? in
            var vector = iovec(iov_base: pointer, iov_len: 1)
            ring.prepareWritev(fileIndex: 0, &vector, count: 1, tag: 2)
            // The same entry as an IORING_OP_NOP (opcode 0), which the ring does not allow.
            ring.ring.pointee.sqes[Int((ring.ring.pointee.sq_next &- 1) & ring.ring.pointee.sq_mask)].opcode = 0
            return run(ring)
        }
        #expect(result == -EACCES)
    }

    @Test func aDescriptorThatIsNotAFixedFileIsRefused() throws {
        let (ring, _, writer) = try ringOnPipe()
        var byte: UInt8 = 0
        let result = withUnsafeMutablePointer(to: &byte) { pointer -> Int32? in
            var vector = iovec(iov_base: pointer, iov_len: 1)
            ring.prepareWritev(fileIndex: 0, &vector, count: 1, tag: 3)
            // A plain descriptor number instead of fixed file 0: IOSQE_FIXED_FILE is required.
            let slot = Int((ring.ring.pointee.sq_next &- 1) & ring.ring.pointee.sq_mask)
            ring.ring.pointee.sqes[slot].flags = 0
            ring.ring.pointee.sqes[slot].fd = writer.raw
            return run(ring)
        }
        #expect(result == -EACCES)
    }
}
