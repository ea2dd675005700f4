// Shared by the virtqueue fuzz targets (FuzzChain, FuzzPackedChain): guest memory in two regions, each
// its own mapping flush against a PROT_NONE guard page on one side and ASan-poisoned up to the
// page boundary on the other, so a stray access faults even in code ASan does not instrument;
// and the harness's own model of them, independent of GuestMemoryMap.
import Glibc
import GuestMemory
import Virtqueue
import FuzzSupport

@inline(never)
func fail(_ message: String) -> Never {
    fz_fail(message)
}

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fail(message()) }
}

let pageSize = Int(fz_page_size())
/// FUZZ_TRACE=1: print what each input does (to check that seeds reach what they mean to).
let trace = getenv("FUZZ_TRACE") != nil
let maxRegionBytes = 32 * 1024
let windowPages = maxRegionBytes / 4096 // the largest region is this many pages

/// One region's reserved address space: guard page, windowPages usable pages, guard page.
final class GuardedArea {
    let base: UnsafeMutableRawPointer
    let totalPages: Int
    // The current region inside it.
    var windowStart: UnsafeMutableRawPointer
    var windowBytes = 0
    var host: UnsafeMutableRawPointer
    var size = 0
    var slack: (UnsafeMutableRawPointer, Int)?

    init() {
        totalPages = windowPages * 4096 / pageSize + 2
        guard let p = fz_reserve(totalPages) else { fail("mmap failed") }
        base = p
        windowStart = p
        host = p
    }

    /// Makes `size` bytes usable, flush against the leading or the trailing guard page.
    func open(size: Int, leading: Bool) {
        let pages = (size + pageSize - 1) / pageSize
        windowBytes = pages * pageSize
        if leading {
            windowStart = base + pageSize
            host = windowStart
        } else {
            windowStart = base + (totalPages - 1 - pages) * pageSize
            host = windowStart + (windowBytes - size)
        }
        self.size = size
        check(fz_protect_rw(windowStart, windowBytes) == 0, "mprotect")
        memset(windowStart, 0, windowBytes)
        slack = windowBytes > size ? (leading ? (host + size, windowBytes - size) : (windowStart, windowBytes - size)) : nil
        if let (p, n) = slack { fz_poison(p, n) }
    }

    func close() {
        if let (p, n) = slack { fz_unpoison(p, n) }
        slack = nil
        check(fz_protect_none(windowStart, windowBytes) == 0, "mprotect")
    }
}

nonisolated(unsafe) let areas = [GuardedArea(), GuardedArea()]

/// The harness's own picture of guest memory.
struct ModelRegion {
    var gpa: UInt64
    var size: UInt64
    var user: UInt64
    var host: UnsafeMutableRawPointer

    func contains(_ address: UInt64) -> Bool { address >= gpa && address - gpa < size }
}

struct Model {
    var regions: [ModelRegion]

    /// Host pointer for [address, address + length) if it lies in one region.
    func host(gpa address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions where r.contains(address) {
            return length <= r.size - (address - r.gpa) ? r.host + Int(address - r.gpa) : nil
        }
        return nil
    }

    func host(user address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions where address >= r.user && address - r.user < r.size {
            return length <= r.size - (address - r.user) ? r.host + Int(address - r.user) : nil
        }
        return nil
    }

    /// The frontend's userspace address for a guest physical one (garbage outside memory).
    func user(gpa address: UInt64) -> UInt64 {
        for r in regions where r.contains(address) { return r.user + (address - r.gpa) }
        return 0x1000_0000_0000 &+ address
    }

    /// The host pieces of a guest physical range that may span adjacent regions; nil if any
    /// byte is outside memory.
    func pieces(gpa address: UInt64, length: UInt64) -> [(UnsafeMutableRawPointer, Int)]? {
        let (end, overflow) = address.addingReportingOverflow(length)
        if overflow { return nil }
        var result: [(UnsafeMutableRawPointer, Int)] = []
        var cursor = address
        while cursor < end {
            guard let r = regions.first(where: { $0.contains(cursor) }) else { return nil }
            let pieceEnd = min(end, r.gpa + r.size)
            result.append((r.host + Int(cursor - r.gpa), Int(pieceEnd - cursor)))
            cursor = pieceEnd
        }
        return result
    }

    func insideARegion(_ base: UnsafeRawPointer, _ length: Int) -> Bool {
        regions.contains { r in
            let start = UnsafeRawPointer(r.host)
            return base >= start && length >= 0 && base + length <= start + Int(r.size) && length <= Int(r.size)
        }
    }
}

struct Piece: Equatable {
    var base: UnsafeMutableRawPointer
    var length: Int
}

struct Reader {
    let data: UnsafeRawBufferPointer
    func u8(_ o: Int) -> UInt8 { o < data.count ? data[o] : 0 }
    func u16(_ o: Int) -> UInt16 { UInt16(u8(o)) | UInt16(u8(o + 1)) << 8 }
    func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) | UInt32(u16(o + 2)) << 16 }
}

func load16(_ p: UnsafeMutableRawPointer) -> UInt16 { p.loadUnaligned(as: UInt16.self) }
func store16(_ p: UnsafeMutableRawPointer, _ v: UInt16) { p.storeBytes(of: v, as: UInt16.self) }

/// Opens both regions (A at guest physical 0, B `gap` bytes after it), copies the input's
/// image into them and describes them to GuestMemoryMap (as [B, A] when `reversed`).
/// `closeGuestMemory()` undoes it.
func openGuestMemory(sizeA: Int, sizeB: Int, gap: UInt64, leadingA: Bool, leadingB: Bool, reversed: Bool,
                     image: UnsafeRawBufferPointer) -> (Model, GuestMemoryMap) {
    areas[0].open(size: sizeA, leading: leadingA)
    areas[1].open(size: sizeB, leading: leadingB)
    let gpaB = UInt64(sizeA) + gap
    let model = Model(regions: [
        ModelRegion(gpa: 0, size: UInt64(sizeA), user: 0x7000_0000_0000 + UInt64(areas[0].host - areas[0].base),
                    host: areas[0].host),
        ModelRegion(gpa: gpaB, size: UInt64(sizeB), user: 0x6000_0000_0000 + UInt64(areas[1].host - areas[1].base),
                    host: areas[1].host),
    ])
    for r in model.regions where r.gpa < UInt64(image.count) {
        let n = min(Int(r.size), image.count - Int(r.gpa))
        r.host.copyMemory(from: image.baseAddress! + Int(r.gpa), byteCount: n)
    }
    var described = model.regions.map {
        MemoryRegion(guestPhysicalAddress: $0.gpa, size: $0.size, userspaceAddress: $0.user, host: $0.host, owner: nil)
    }
    if reversed { described.reverse() }
    do { return (model, try GuestMemoryMap(regions: described)) } catch { fail("GuestMemoryMap refused a valid table: \(error)") }
}

func closeGuestMemory() {
    areas[0].close()
    areas[1].close()
}


/// After `undoPop()`, pops again into the same place: it must give the same chain.
func popAgain<Queue: DeviceQueue>(_ queue: Queue, _ chain: PoppedChain, into buffers: IOVectorBuffer, startCount: Int,
                                  startBytes: Int, writable: Bool, maxBytes: UInt64) -> PoppedChain {
    buffers.truncate(to: startCount, totalBytes: startBytes)
    do {
        guard let again = try queue.popChain(into: buffers, writable: writable, maxBytes: maxBytes) else {
            fail("pop after undoPop found nothing")
        }
        check(again == chain, "pop after undoPop differs: \(again) vs \(chain)")
        return again
    } catch { fail("pop after undoPop threw \(error)") }
}
