import CTapwire

/// The frontend's dirty-page bitmap during a live migration (vhost-user SET_LOG_BASE with
/// PROTOCOL_F_LOG_SHMFD): bit `page % 8` of byte `page / 8` stands for the 4 KiB page `page`
/// of guest physical memory. While QEMU copies guest memory it re-sends every page whose bit is
/// set, so every byte the device writes into guest memory must have its page marked.
/// Marks come from every queue thread at once and from the frontend's reader: atomic ORs.
public final class DirtyLog: @unchecked Sendable {
    /// VHOST_LOG_PAGE: the log's granule.
    public static let pageShift: UInt64 = 12
    /// Guest physical pages one byte of the bitmap covers.
    static let pagesPerByte: UInt64 = 8

    let bitmap: UnsafeMutablePointer<UInt8>
    public let byteCount: UInt64
    /// Keeps the mapping alive.
    let owner: AnyObject

    public init(bitmap: UnsafeMutableRawPointer, byteCount: UInt64, owner: AnyObject) {
        self.bitmap = bitmap.assumingMemoryBound(to: UInt8.self)
        self.byteCount = byteCount
        self.owner = owner
    }

    /// Guest physical addresses below this are covered.
    public var coveredBytes: UInt64 {
        let (covered, overflow) = byteCount.multipliedReportingOverflow(by: Self.pagesPerByte << Self.pageShift)
        return overflow ? .max : covered
    }

    /// Marks the pages of `length` bytes at guest physical `address`. Returns false (and marks
    /// nothing past the end) if part of the range lies beyond the log.
    @inline(__always) @discardableResult
    public func mark(guestPhysical address: UInt64, length: UInt64) -> Bool {
        guard length > 0 else { return true }
        let (last, overflow) = address.addingReportingOverflow(length - 1)
        guard !overflow else { return false }
        var page = address >> Self.pageShift
        let lastPage = last >> Self.pageShift
        while page <= lastPage {
            let byte = page / Self.pagesPerByte
            guard byte < byteCount else { return false }
            // SAFETY: byte < byteCount, the length of the bitmap mapped and checked at SET_LOG_BASE.
            tw_atomic_or_u8(bitmap + Int(byte), UInt8(1) << UInt8(page % Self.pagesPerByte))
            page += 1
        }
        return true
    }

    /// Marks `length` bytes the device wrote at host address `pointer`, which lies inside one
    /// region of `memory` (an iovec built from that memory never straddles two regions).
    /// Returns false if the address is in no region or the range is beyond the log.
    @inline(__always) @discardableResult
    public func mark(host pointer: UnsafeRawPointer, length: Int, in memory: GuestMemoryMap) -> Bool {
        guard let address = memory.guestPhysical(host: pointer, length: length) else { return false }
        return mark(guestPhysical: address, length: UInt64(length))
    }
}
