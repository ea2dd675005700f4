// Finds where JSON text goes wrong, for error messages: the JSON decoder on Linux only
// says "The given data was not valid JSON." (RFC 8259 grammar, no extensions.)

enum JSONSyntax {
    /// nil when `bytes` is one valid JSON value (with optional whitespace around it),
    /// else e.g. `expected ',' or '}' at line 1, column 12, found '"'`.
    static func firstError(in bytes: [UInt8]) -> String? {
        var scanner = Scanner(bytes: bytes)
        do throws(SyntaxError) {
            scanner.skipWhitespace()
            try scanner.value(depth: 0)
            scanner.skipWhitespace()
            if scanner.at < bytes.count { throw scanner.error("end of input") }
            return nil
        } catch {
            return error.message
        }
    }

    struct SyntaxError: Error { var message: String }

    struct Scanner {
        let bytes: [UInt8]
        var at = 0

        var current: UInt8? { at < bytes.count ? bytes[at] : nil }

        func error(_ expected: String) -> SyntaxError {
            var line = 1, column = 1
            for b in bytes[..<min(at, bytes.count)] {
                if b == UInt8(ascii: "\n") { line += 1; column = 1 } else if b & 0xC0 != 0x80 { column += 1 }
            }
            let found: String
            if let c = current {
                found = (0x20..<0x7F).contains(c) ? "'\(Character(Unicode.Scalar(c)))'" : "byte 0x\(String(c, radix: 16))"
            } else {
                found = "the end of the input"
            }
            return SyntaxError(message: "expected \(expected) at line \(line), column \(column), found \(found)")
        }

        mutating func skipWhitespace() {
            while let c = current, c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { at += 1 }
        }

        mutating func expect(_ literal: String) throws(SyntaxError) {
            for b in literal.utf8 {
                guard current == b else { throw error("'\(literal)'") }
                at += 1
            }
        }

        mutating func value(depth: Int) throws(SyntaxError) {
            guard depth < 512 else { throw error("less nesting") }
            guard let c = current else { throw error("a value") }
            switch c {
            case UInt8(ascii: "{"):
                at += 1
                skipWhitespace()
                if current == UInt8(ascii: "}") { at += 1; return }
                while true {
                    skipWhitespace()
                    guard current == UInt8(ascii: "\"") else { throw error("a string key") }
                    try string()
                    skipWhitespace()
                    guard current == UInt8(ascii: ":") else { throw error("':'") }
                    at += 1
                    skipWhitespace()
                    try value(depth: depth + 1)
                    skipWhitespace()
                    if current == UInt8(ascii: ",") { at += 1; continue }
                    if current == UInt8(ascii: "}") { at += 1; return }
                    throw error("',' or '}'")
                }
            case UInt8(ascii: "["):
                at += 1
                skipWhitespace()
                if current == UInt8(ascii: "]") { at += 1; return }
                while true {
                    skipWhitespace()
                    try value(depth: depth + 1)
                    skipWhitespace()
                    if current == UInt8(ascii: ",") { at += 1; continue }
                    if current == UInt8(ascii: "]") { at += 1; return }
                    throw error("',' or ']'")
                }
            case UInt8(ascii: "\""): try string()
            case UInt8(ascii: "t"): try expect("true")
            case UInt8(ascii: "f"): try expect("false")
            case UInt8(ascii: "n"): try expect("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
            default: throw error("a value")
            }
        }

        mutating func string() throws(SyntaxError) {
            at += 1  // opening quote
            while let c = current {
                switch c {
                case UInt8(ascii: "\""):
                    at += 1
                    return
                case UInt8(ascii: "\\"):
                    at += 1
                    guard let e = current else { throw error("an escape") }
                    if e == UInt8(ascii: "u") {
                        at += 1
                        for _ in 0..<4 {
                            guard let h = current, (h >= 0x30 && h <= 0x39) || (h | 0x20 >= 0x61 && h | 0x20 <= 0x66) else {
                                throw error("4 hex digits")
                            }
                            at += 1
                        }
                    } else {
                        guard "\"\\/bfnrt".utf8.contains(e) else { throw error("an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)") }
                        at += 1
                    }
                case 0..<0x20:
                    throw error("'\"' (control characters must be escaped)")
                default:
                    at += 1
                }
            }
            throw error("'\"'")
        }

        mutating func digits() throws(SyntaxError) {
            guard let c = current, c >= 0x30, c <= 0x39 else { throw error("a digit") }
            while let c = current, c >= 0x30, c <= 0x39 { at += 1 }
        }

        mutating func number() throws(SyntaxError) {
            if current == UInt8(ascii: "-") { at += 1 }
            if current == UInt8(ascii: "0") { at += 1 } else { try digits() }
            if current == UInt8(ascii: ".") { at += 1; try digits() }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                at += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { at += 1 }
                try digits()
            }
        }
    }
}
