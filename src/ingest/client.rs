//! Client context of a beacon: who sent it (IP), with what (User-Agent) and from which page
//! (Referer host). Pure functions, no IO.
//!
//! Rules:
//! - the client IP is the socket peer, unless the peer is a trusted proxy
//!   (`http.trusted_proxies`); then it is the right-most address of `X-Forwarded-For` that is
//!   not itself a trusted proxy. Everything left of it was written by the client and may be
//!   forged, so it is never read. An untrusted peer's `X-Forwarded-For` is ignored entirely
//!   (spoofing). A malformed entry met while walking from the right stops the walk at the last
//!   good address (the nearest proxy's own view), never at a client-chosen one. Several
//!   `X-Forwarded-For` lines are one list, in order (RFC 9110 §5.3);
//! - the User-Agent is stored as text in the WAL (at most [`UA_MAX_BYTES`], cut at a UTF-8
//!   boundary) and as a 64-bit FNV-1a hash ([`ua_hash`]) in MySQL, with the text once in
//!   `user_agents`. The hash is computed by the flusher, so the hot path only copies bytes;
//! - the Referer host is the lower-cased host of an absolute `http(s)` URL, without userinfo
//!   and port; anything else (relative, other schemes, odd characters) is no host at all.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Longest User-Agent kept, bytes; longer ones are cut (real ones are < 300 bytes).
pub const UA_MAX_BYTES: usize = 512;
/// Longest Referer host kept, bytes (a hostname's limit).
pub const REFERER_HOST_MAX_BYTES: usize = 253;

/// Why a `http.trusted_proxies` entry is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{entry}` is not an address or CIDR block (like 10.0.0.0/8 or fd00::/8)")]
pub struct CidrError {
    pub entry: String,
}

/// One CIDR block: the network address and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError { entry: text.to_owned() };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Cidr { network, prefix_len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u128::from(u32::from(net)) << 96, u128::from(u32::from(ip)) << 96, self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), self.prefix_len),
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, what a dual-stack socket reports) is the
/// IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: u128, b: u128, prefix_len: u8) -> bool {
    let mask = if prefix_len == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix_len)) };
    a & mask == b & mask
}

/// The `X-Forwarded-For` lines of one request, borrowed from the head: the span from the first
/// line's value to the last line's end, and how many lines there are. One line (the common
/// case) is just its value; with more, the header lines in between are walked again, so any
/// number of lines costs no allocation and the request stays small.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardedFor<'a> {
    span: &'a [u8],
    lines: u16,
}

impl<'a> ForwardedFor<'a> {
    /// One line, as most requests carry.
    pub fn one(value: &'a [u8]) -> ForwardedFor<'a> {
        ForwardedFor { span: value, lines: 1 }
    }

    /// `lines` header lines: `span` starts at the first one's value and ends with the last
    /// one's value, the header lines between included as they are in the head.
    pub fn spanning(span: &'a [u8], lines: u16) -> ForwardedFor<'a> {
        ForwardedFor { span, lines }
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The lines' values, last line first.
    pub fn values_rev(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let (first, rest) = match self.span.iter().position(|&b| b == b'\n') {
            Some(at) if self.lines > 1 => (&self.span[..at], &self.span[at + 1..]),
            _ => (self.span, &[][..]),
        };
        let later = rest.rsplit(|&b| b == b'\n').filter_map(forwarded_value);
        later.chain((!self.is_empty()).then(|| first.strip_suffix(b"\r").unwrap_or(first)))
    }

    /// Every entry, right-most first, across the lines.
    fn entries_rev(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.values_rev().flat_map(|line| line.rsplit(|&b| b == b','))
    }
}

/// The value of an `X-Forwarded-For` header line (`None` for any other header).
fn forwarded_value(line: &[u8]) -> Option<&[u8]> {
    const NAME: &[u8] = b"x-forwarded-for:";
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let head = line.get(..NAME.len())?;
    head.eq_ignore_ascii_case(NAME).then(|| line[NAME.len()..].trim_ascii())
}

/// The peers whose `X-Forwarded-For` is believed (`http.trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
}

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, CidrError> {
        Ok(TrustedProxies { blocks: entries.iter().map(|e| Cidr::parse(e)).collect::<Result<_, _>>()? })
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|b| b.contains(ip))
    }

    /// The client address of a request from `peer` carrying the `X-Forwarded-For` lines
    /// `forwarded` (none: empty); see the module doc.
    pub fn client_ip(&self, peer: IpAddr, forwarded: &ForwardedFor<'_>) -> IpAddr {
        let peer = canonical(peer);
        if forwarded.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for entry in forwarded.entries_rev() {
            match parse_forwarded_entry(entry) {
                Some(ip) if self.contains(ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` element: an address, optionally `[v6]` or with a `:port` on v4.
fn parse_forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let bracketed = text.strip_prefix('[').and_then(|t| t.split_once(']')).map(|(ip, _)| ip);
    let v4_with_port = text.split_once(':').map(|(ip, _)| ip);
    bracketed.or(v4_with_port)?.parse::<IpAddr>().ok().map(canonical)
}

/// Writes `ip` in its canonical text form into `out` (cleared first).
pub fn write_ip(ip: IpAddr, out: &mut String) {
    out.clear();
    // Writing to a String cannot fail.
    let _ = write!(out, "{ip}");
}

/// 64-bit FNV-1a of the User-Agent bytes: stable across versions and platforms (it is a
/// key in MySQL), cheap, and well spread for short ASCII strings.
pub fn ua_hash(ua: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    ua.bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The User-Agent text kept for a raw header value: at most [`UA_MAX_BYTES`], cut at a
/// character boundary; invalid UTF-8 (legal but rare in headers) keeps its valid prefix.
/// `None` for an empty value.
pub fn user_agent(raw: &[u8]) -> Option<&str> {
    let raw = &raw[..raw.len().min(UA_MAX_BYTES)];
    let text = if raw.is_ascii() {
        // SAFETY: ASCII is UTF-8. `str::from_utf8` costs ~100 instructions more on a short
        // User-Agent (callgrind), and nearly every one is ASCII.
        unsafe { std::str::from_utf8_unchecked(raw) }
    } else {
        match std::str::from_utf8(raw) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&raw[..e.valid_up_to()]).ok()?,
        }
    };
    // A value that starts and ends with a visible ASCII byte (nearly every one) has nothing
    // to trim: no Unicode space is ASCII-graphic, and a last ASCII byte is a whole last char.
    let plain = |b: Option<&u8>| b.is_some_and(u8::is_ascii_graphic);
    if plain(text.as_bytes().first()) && plain(text.as_bytes().last()) {
        return Some(text);
    }
    let text = text.trim();
    (!text.is_empty()).then_some(text)
}

/// Writes the lower-cased host of an absolute `http`/`https` Referer into `out` (cleared
/// first); returns false (and leaves `out` empty) when there is no usable host.
pub fn referer_host(referer: &[u8], out: &mut String) -> bool {
    out.clear();
    let Some(host) = host_of(referer) else {
        return false;
    };
    if host.is_empty() || host.len() > REFERER_HOST_MAX_BYTES || !host.iter().all(|&b| is_host_byte(b)) {
        return false;
    }
    out.extend(host.iter().map(|&b| char::from(b.to_ascii_lowercase())));
    true
}

fn host_of(url: &[u8]) -> Option<&[u8]> {
    let rest =
        strip_prefix_ignore_case(url, b"https://").or_else(|| strip_prefix_ignore_case(url, b"http://"))?;
    let authority_end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    if let Some(v6) = host_port.strip_prefix(b"[") {
        let end = v6.iter().position(|&b| b == b']')?;
        return Some(&host_port[..end + 2]);
    }
    let host_end = host_port.iter().position(|&b| b == b':').unwrap_or(host_port.len());
    Some(&host_port[..host_end])
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Hostname and IP-literal characters; all of them are safe in JSON and SQL unescaped.
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(line: &[u8]) -> ForwardedFor<'_> {
        ForwardedFor::one(line)
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn cidr_parsing_and_membership() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped v6 is the v4 address");
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/", "10.0.0/8", "/8"] {
            assert_eq!(Cidr::parse(bad), Err(CidrError { entry: bad.into() }), "{bad}");
        }
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let p = proxies(&["10.0.0.0/8"]);
        let peer = ip("203.0.113.7");
        assert_eq!(p.client_ip(peer, &xff(b"1.2.3.4")), peer);
        assert_eq!(p.client_ip(peer, &xff(b"10.0.0.1, 1.2.3.4")), peer);
        assert_eq!(TrustedProxies::default().client_ip(peer, &xff(b"1.2.3.4")), peer);
    }

    #[test]
    fn trusted_peer_gives_right_most_untrusted() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        assert_eq!(p.client_ip(peer, &xff(b"198.51.100.9")), ip("198.51.100.9"));
        // The client forged "6.6.6.6" on the left; the proxies appended the real address.
        assert_eq!(p.client_ip(peer, &xff(b"6.6.6.6, 198.51.100.9, 10.1.1.1")), ip("198.51.100.9"));
        // Only proxies in the chain: the left-most proxy is the best we know.
        assert_eq!(p.client_ip(peer, &xff(b"10.2.2.2,10.1.1.1")), ip("10.2.2.2"));
        assert_eq!(p.client_ip(peer, &ForwardedFor::default()), peer);
        assert_eq!(p.client_ip(peer, &xff(b"")), peer);
        // Garbage stops the walk at the last good (proxy-written) address.
        assert_eq!(p.client_ip(peer, &xff(b"198.51.100.9, junk, 10.1.1.1")), ip("10.1.1.1"));
        assert_eq!(p.client_ip(peer, &xff(b"[2001:db8::1]:443")), ip("2001:db8::1"));
        assert_eq!(p.client_ip(peer, &xff(b"198.51.100.9:5555")), ip("198.51.100.9"));
        assert_eq!(p.client_ip(ip("::ffff:127.0.0.1"), &xff(b"2001:db8::2")), ip("2001:db8::2"));
    }

    #[test]
    fn several_lines_are_one_list() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let span = b"6.6.6.6, 198.51.100.9\r\nAccept: x\r\nx-forwarded-for: 10.1.1.1";
        let f = ForwardedFor::spanning(span, 2);
        let values: Vec<&[u8]> = f.values_rev().collect();
        assert_eq!(values, [&b"10.1.1.1"[..], b"6.6.6.6, 198.51.100.9"]);
        assert_eq!(p.client_ip(peer, &f), ip("198.51.100.9"), "the walk crosses into the earlier line");
        let empty_last = ForwardedFor::spanning(b"198.51.100.9\r\nX-Forwarded-For: ", 2);
        assert_eq!(p.client_ip(peer, &empty_last), peer, "an empty line is a malformed entry");
        assert!(ForwardedFor::default().is_empty() && !f.is_empty());
        assert_eq!(ForwardedFor::default().values_rev().count(), 0);
    }

    #[test]
    fn ip_text() {
        let mut s = String::from("junk");
        write_ip(ip("2001:db8::1"), &mut s);
        assert_eq!(s, "2001:db8::1");
        write_ip(ip("127.0.0.1"), &mut s);
        assert_eq!(s, "127.0.0.1");
    }

    #[test]
    fn ua_hash_is_fnv1a_64() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(ua_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(ua_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(ua_hash("Mozilla/5.0 A"), ua_hash("Mozilla/5.0 B"));
    }

    #[test]
    fn user_agent_is_trimmed_cut_and_utf8() {
        assert_eq!(user_agent(b"  wrk "), Some("wrk"));
        assert_eq!(user_agent(b""), None);
        let long = vec![b'x'; UA_MAX_BYTES + 10];
        assert_eq!(user_agent(&long).map(str::len), Some(UA_MAX_BYTES));
        let mut cut_in_char = vec![b'x'; UA_MAX_BYTES - 1];
        cut_in_char.extend_from_slice("é".as_bytes());
        assert_eq!(user_agent(&cut_in_char).map(str::len), Some(UA_MAX_BYTES - 1));
        assert_eq!(user_agent(b"ok\xffbad"), Some("ok"));
        assert_eq!(user_agent("\u{3000}wrk\u{a0}".as_bytes()), Some("wrk"));
        assert_eq!(user_agent("a\u{2003}".as_bytes()), Some("a"));
        assert_eq!(user_agent(b"\x0bwrk 1\t"), Some("wrk 1"));
        assert_eq!(user_agent(b" \t "), None);
    }

    proptest::proptest! {
        /// The ASCII shortcut trims exactly as `str::trim` does.
        #[test]
        fn user_agent_trims_as_str_trim(ua in "[ \t\x0b\u{a0}\u{3000}\u{2003}a-z/.()é]{0,40}") {
            let want = Some(ua.trim()).filter(|t| !t.is_empty());
            proptest::prop_assert_eq!(user_agent(ua.as_bytes()), want);
        }
    }

    #[test]
    fn referer_hosts() {
        let mut out = String::new();
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"https://Piratka.BIZ/watch?v=1", Some("piratka.biz")),
            (b"http://user:pw@example.org:8080/x", Some("example.org")),
            (b"HTTP://a.b", Some("a.b")),
            (b"http://[::1]:34201/page", Some("[::1]")),
            (b"http://127.0.0.1:9/", Some("127.0.0.1")),
            (b"https://x.org#frag", Some("x.org")),
            (b"/relative/path", None),
            (b"ftp://x.org/", None),
            (b"https:///nohost", None),
            (b"https://bad\"host/", None),
        ];
        for &(referer, want) in cases {
            let found = referer_host(referer, &mut out);
            assert_eq!(found.then_some(out.as_str()), want, "{}", String::from_utf8_lossy(referer));
        }
    }
}
