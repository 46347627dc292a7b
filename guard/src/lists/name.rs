//! Domain name normalization: every list entry becomes lower-case ASCII
//! without a trailing dot, IDNs in punycode, checked against the RFC 1035
//! size limits, so the kernel table is keyed on one spelling per name.

use std::net::{Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// RFC 1035 §2.3.4: 255 octets on the wire is 253 characters of dotted text
/// (the wire form adds one length octet before the first label and the root).
pub const NAME_TEXT_MAX: usize = 253;
/// RFC 1035 §2.3.4: labels are 63 octets or less.
pub const LABEL_MAX: usize = 63;

/// Why a list entry is not a usable domain name. The messages end up in
/// `file:line: message` diagnostics, so they say what is wrong with the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name: the DNS root cannot be listed")]
    Root,
    #[error("empty label in `{0}` (two dots in a row or a leading dot)")]
    EmptyLabel(String),
    #[error("label `{label}` is {len} bytes; DNS labels are at most 63 (RFC 1035 §2.3.4)")]
    LabelTooLong { label: String, len: usize },
    #[error("name is {0} characters; DNS names are at most 253 (255 octets on the wire, RFC 1035 §2.3.4)")]
    TooLong(usize),
    #[error("invalid character {0:?} in name `{1}`")]
    BadChar(char, String),
    #[error("`{0}` is an IP address, not a domain name")]
    IpAddress(String),
    #[error("`{0}` is not a valid internationalized domain name (UTS 46)")]
    Idna(String),
}

/// Normalizes one name as written in a list: one trailing dot is dropped,
/// ASCII is lower-cased, non-ASCII goes through UTS 46 to punycode.
///
/// Most list entries are plain ASCII, so those are checked byte by byte
/// without calling into idna: on a million-line hosts file that is the
/// difference between tens of milliseconds and seconds.
pub fn normalize(raw: &str) -> Result<String, NameError> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(NameError::Root);
    }
    if trimmed.is_ascii() {
        return check_ascii(trimmed);
    }
    // DnsLength::Ignore and an empty deny list: the limits and the allowed
    // characters are enforced by check_ascii below, with our own messages,
    // and `_` (used in SRV/DKIM-style names on real lists) stays allowed.
    let ascii = Uts46::new()
        .to_ascii(
            trimmed.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| NameError::Idna(raw.to_owned()))?;
    // UTS 46 maps ideographic full stops to '.', which may yield a new
    // trailing dot.
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    if ascii.is_empty() {
        return Err(NameError::Root);
    }
    check_ascii(ascii)
}

/// Validates and lower-cases an ASCII name (no trailing dot).
fn check_ascii(name: &str) -> Result<String, NameError> {
    if name.len() > NAME_TEXT_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    let bytes = name.as_bytes();
    let mut label_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match CLASS[b as usize] {
            LDH => {}
            DOT => {
                check_label(name, label_start, i)?;
                label_start = i + 1;
            }
            _ => {
                if b == b':' && name.parse::<Ipv6Addr>().is_ok() {
                    return Err(NameError::IpAddress(name.to_owned()));
                }
                return Err(NameError::BadChar(b as char, name.to_owned()));
            }
        }
    }
    check_label(name, label_start, name.len())?;
    // No TLD is all digits (RFC 3696 §2), so only then can it be an address.
    if bytes[label_start..].iter().all(u8::is_ascii_digit) && name.parse::<Ipv4Addr>().is_ok() {
        return Err(NameError::IpAddress(name.to_owned()));
    }
    Ok(name.to_ascii_lowercase())
}

const BAD: u8 = 0;
const LDH: u8 = 1;
const DOT: u8 = 2;

/// Byte classes for the ASCII fast path: letters, digits, `-` and `_`
/// (underscore appears in real names such as `_dmarc`), and the dot.
static CLASS: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] = LDH;
        }
        b += 1;
    }
    t[b'.' as usize] = DOT;
    t
};

fn check_label(name: &str, start: usize, end: usize) -> Result<(), NameError> {
    let len = end - start;
    if len == 0 {
        return Err(NameError::EmptyLabel(name.to_owned()));
    }
    if len > LABEL_MAX {
        return Err(NameError::LabelTooLong {
            label: name[start..end].to_owned(),
            len,
        });
    }
    Ok(())
}

/// Encodes a normalized dotted name in DNS wire format (RFC 1035 §3.1):
/// `"example.com"` becomes `b"\x07example\x03com\x00"`. The empty string is
/// the root, `b"\x00"`.
pub fn to_wire(name: &str) -> Vec<u8> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            debug_assert!(label.len() <= LABEL_MAX, "to_wire needs a normalized name");
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_lowercased_and_trailing_dot_dropped() {
        assert_eq!(normalize("Ads.Example.COM.").unwrap(), "ads.example.com");
        assert_eq!(
            normalize("_dmarc.x-y.example").unwrap(),
            "_dmarc.x-y.example"
        );
        assert_eq!(normalize("com").unwrap(), "com");
    }

    #[test]
    fn idn_goes_to_punycode() {
        assert_eq!(
            normalize("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize("BÜCHER.Example.").unwrap(),
            "xn--bcher-kva.example"
        );
        // Ideographic full stop is a label separator under UTS 46.
        assert_eq!(
            normalize("bücher。example").unwrap(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn malformed_names() {
        assert_eq!(normalize("."), Err(NameError::Root));
        assert_eq!(normalize(""), Err(NameError::Root));
        assert!(matches!(normalize("a..b"), Err(NameError::EmptyLabel(_))));
        assert!(matches!(normalize(".a.b"), Err(NameError::EmptyLabel(_))));
        assert!(matches!(normalize("a.b.."), Err(NameError::EmptyLabel(_))));
        assert!(matches!(normalize("a b"), Err(NameError::BadChar(' ', _))));
        assert!(matches!(
            normalize("ex*ample.com"),
            Err(NameError::BadChar('*', _))
        ));
        assert!(matches!(
            normalize("ex/ample"),
            Err(NameError::BadChar('/', _))
        ));
        assert!(matches!(normalize("1.2.3.4"), Err(NameError::IpAddress(_))));
        assert!(matches!(
            normalize("2001:db8::1"),
            Err(NameError::IpAddress(_))
        ));
        assert!(matches!(normalize("a:b"), Err(NameError::BadChar(':', _))));
        // Numeric labels are fine when the name is not an address.
        assert_eq!(normalize("1.2.3.4.example").unwrap(), "1.2.3.4.example");
    }

    #[test]
    fn label_and_name_limits() {
        let l63 = "a".repeat(63);
        assert!(normalize(&format!("{l63}.com")).is_ok());
        let l64 = "a".repeat(64);
        assert_eq!(
            normalize(&format!("{l64}.com")),
            Err(NameError::LabelTooLong {
                label: l64.clone(),
                len: 64
            })
        );
        // 4 labels of 63 + 3 dots = 255 characters: too long.
        let long = [l63.as_str(); 4].join(".");
        assert_eq!(normalize(&long), Err(NameError::TooLong(255)));
        // 253 characters is the maximum and encodes to 255 wire octets.
        let max = format!("{}.{}.{}.{}", l63, l63, l63, "a".repeat(61));
        assert_eq!(max.len(), 253);
        assert_eq!(to_wire(&normalize(&max).unwrap()).len(), 255);
        // A trailing dot does not count against the limit.
        assert!(normalize(&format!("{max}.")).is_ok());
    }

    #[test]
    fn wire_format() {
        assert_eq!(to_wire("example.com"), b"\x07example\x03com\x00");
        assert_eq!(to_wire("com"), b"\x03com\x00");
        assert_eq!(to_wire(""), b"\x00");
    }
}
