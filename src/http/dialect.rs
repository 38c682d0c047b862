//! The beacon dialects beyond `GET /log`: pixel GIFs, `POST /log` bodies (form, text, JSON
//! batches), CORS preflights, and the client context (IP, User-Agent, Referer host, kept
//! extra parameters) stored with every event.
//!
//! Invariants:
//! - a POST batch is validated whole before anything is appended, and all its events are
//!   appended with no await in between, so they land in the same WAL write;
//! - a request without `Origin` never touches the CORS code;
//! - the per-connection [`DialectScratch`] is reused: a GET beacon allocates nothing once
//!   warm (the peer's text form is computed once per connection).

use std::net::IpAddr;

use super::answer::BeaconKind;
use super::cors::{Cors, Grant};
use super::request::Request;
use crate::config::Config;
use crate::ingest::body::{self, BatchScratch, BodyRules, JsonParser};
use crate::ingest::client::{self, TrustedProxies};
use crate::ingest::encoding;
use crate::ingest::extra::KeepParams;
use crate::ingest::geoip::{CoreGeo, GeoStatus};
use crate::ingest::intake::{Accepted, Intake};
use crate::wal::group::Ticket;
use crate::wal::record::Context;

/// The dialect settings of one core, from the config.
#[derive(Debug, Clone)]
pub struct Dialects {
    pub cors: Cors,
    proxies: TrustedProxies,
    keep: KeepParams,
    max_batch_events: usize,
    client_ip: bool,
    user_agent: bool,
    referer: bool,
    /// This core's GeoIP reader, with `enrich.geoip_db`; `None`: no lookup at all.
    geo: Option<CoreGeo>,
}

impl Dialects {
    /// Builds from a validated config (an invalid `http.trusted_proxies` entry is skipped:
    /// `Config::validate` already refused it). The GeoIP database comes opened with the
    /// config (`crate::ingest::enrich::Enrichment::start`).
    pub fn from_config(config: &Config) -> Dialects {
        let geo = config.enrich.opened.clone().map(CoreGeo::new);
        if geo.is_none() && config.enrich.geoip_enabled() {
            tracing::warn!(
                "enrich.geoip_db is set but was not opened before the cores started: no countries"
            );
        }
        Dialects {
            cors: Cors::new(&config.http.cors_origins),
            proxies: TrustedProxies::parse(&config.http.trusted_proxies).unwrap_or_default(),
            keep: KeepParams::new(&config.ingest.keep_params),
            max_batch_events: config.ingest.max_batch_events,
            client_ip: config.ingest.client_ip,
            user_agent: config.ingest.user_agent,
            referer: config.ingest.referer,
            geo,
        }
    }

    /// What `/debug/geoip` shows; `None` with GeoIP off.
    pub fn geoip_status(&self) -> Option<GeoStatus> {
        self.geo.as_ref().map(|g| g.shared().status())
    }
}

/// Per-connection buffers of the dialects, reused for every request.
#[derive(Debug)]
pub struct DialectScratch {
    peer: IpAddr,
    /// `peer` as text, computed once.
    peer_text: String,
    /// Text of a forwarded client IP.
    forwarded_ip: String,
    referer_host: String,
    extra: String,
    /// The (de-chunked) body of the current POST.
    pub body: Vec<u8>,
    batch: BatchScratch,
}

impl DialectScratch {
    pub fn new(peer: IpAddr) -> DialectScratch {
        let mut peer_text = String::new();
        client::write_ip(peer, &mut peer_text);
        DialectScratch {
            peer,
            peer_text,
            forwarded_ip: String::new(),
            referer_host: String::new(),
            extra: String::new(),
            body: Vec::new(),
            batch: BatchScratch::default(),
        }
    }
}

/// What a dialect request comes to; `conn` renders it.
#[derive(Debug)]
pub enum Outcome {
    /// `events` records were appended to the open tick; answer once `ticket` completes.
    Accepted { kind: BeaconKind, events: u32, grant: Option<Grant>, ticket: Ticket },
    /// A preflight from an allowed origin.
    Preflight(Grant),
    /// A valid batch from a bot, dropped (`ingest.drop_bots`).
    DroppedBot,
    /// Refused; `label` for the rejection metric.
    Rejected { status: u16, message: String, label: &'static str },
}

/// The client context of `req`, with each part switched on in the config, and the client
/// IP's country with GeoIP on (also when the IP itself is not stored).
pub fn client_context<'a>(req: &Request<'a>, d: &Dialects, s: &'a mut DialectScratch) -> Context<'a> {
    let DialectScratch { peer, peer_text, forwarded_ip, referer_host, extra, .. } = s;
    let forwarded = !req.forwarded_for.is_empty() && !d.proxies.is_empty();
    let client = (d.client_ip || d.geo.is_some()).then(|| {
        if forwarded {
            d.proxies.client_ip(*peer, &req.forwarded_for)
        } else {
            *peer
        }
    });
    let ip = match client {
        Some(addr) if d.client_ip && forwarded => {
            client::write_ip(addr, forwarded_ip);
            Some(forwarded_ip.as_str())
        }
        Some(_) if d.client_ip => Some(peer_text.as_str()),
        _ => None,
    };
    let country = d.geo.as_ref().zip(client).and_then(|(geo, addr)| geo.country(addr));
    let ua = if d.user_agent { req.user_agent.and_then(client::user_agent) } else { None };
    let referer_host = match req.referer {
        Some(referer) if d.referer && client::referer_host(referer, referer_host) => {
            Some(referer_host.as_str())
        }
        _ => None,
    };
    let extra = (!d.keep.is_empty() && d.keep.extract(req.query, extra)).then_some(extra.as_str());
    Context { ip, ua, referer_host, extra, event_id: None, country }
}

/// The CORS grant of a request, `None` without `Origin` or for an origin not allowed.
pub fn grant(req: &Request<'_>, d: &Dialects) -> Option<Grant> {
    req.origin.and_then(|origin| d.cors.grant(origin))
}

/// `OPTIONS /log` (and the pixel paths).
pub fn preflight(req: &Request<'_>, d: &Dialects) -> Outcome {
    match grant(req, d) {
        Some(grant) if req.cors_request_method.is_some() => Outcome::Preflight(grant),
        Some(_) => Outcome::Rejected {
            status: 400,
            message: "OPTIONS without Access-Control-Request-Method is not a CORS preflight".into(),
            label: "bad_preflight",
        },
        None => Outcome::Rejected {
            status: 403,
            message: "origin not allowed by http.cors_origins".into(),
            label: "cors_origin",
        },
    }
}

/// `POST /log`: decodes the body in `s.body` (`Content-Encoding`), validates it whole, then
/// hands every event to `intake`.
pub fn post_beacon(
    req: &Request<'_>,
    now_ms: u64,
    intake: &Intake,
    d: &Dialects,
    s: &mut DialectScratch,
) -> Outcome {
    if let Err(refused) = decode_body(req, intake, &mut s.body) {
        return refused;
    }
    let kind = match body::body_kind(req.content_type, &s.body) {
        Ok(kind) => kind,
        Err(e) => return rejected(e),
    };
    let rules = BodyRules { rules: intake.rules(), max_events: d.max_batch_events, parser: JsonParser::Simd };
    let mut batch = std::mem::take(&mut s.batch);
    let mut body = std::mem::take(&mut s.body);
    let parsed = body::parse_body(kind, &mut body, &rules, &mut batch);
    let outcome = match parsed {
        Err(e) => rejected(e),
        Ok(()) => {
            let grant = grant(req, d);
            // A form body is a query string: its extra parameters are kept like a GET's.
            let query = match kind {
                body::BodyKind::Form => std::str::from_utf8(&body).unwrap_or(""),
                body::BodyKind::Json => req.query,
            };
            let with_body_query = Request { query, ..*req };
            let context = client_context(&with_body_query, d, s);
            match intake.accept_batch(batch.beacons(now_ms), req.user_agent, &context) {
                (events, Some(Accepted::Stored(ticket))) => {
                    Outcome::Accepted { kind: BeaconKind::NoContent, events, grant, ticket }
                }
                (_, Some(Accepted::Bot)) => Outcome::DroppedBot,
                // `parse_body` refuses an empty batch; should one slip through, nothing was stored.
                (_, None) => rejected(body::BodyError::Empty),
            }
        }
    };
    s.body = body;
    s.batch = batch;
    outcome
}

/// Decodes the body in place per its `Content-Encoding`; the refusal if it cannot be.
fn decode_body(req: &Request<'_>, intake: &Intake, body: &mut Vec<u8>) -> Result<(), Outcome> {
    let coding = match encoding::coding_of(req.content_encoding) {
        Ok(coding) if !req.content_encoding_repeated => coding,
        _ => {
            let message = encoding::UnsupportedEncoding.reason().to_owned();
            return Err(Outcome::Rejected { status: 415, message, label: "content_encoding" });
        }
    };
    intake.decode_body(coding, body).map_err(|e| Outcome::Rejected {
        status: e.status(),
        message: e.to_string(),
        label: e.label(),
    })
}

fn rejected(e: body::BodyError) -> Outcome {
    Outcome::Rejected { status: e.status(), message: e.to_string(), label: e.label() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse, Limits, Parsed};

    fn dialects(edit: impl FnOnce(&mut Config)) -> Dialects {
        let mut c = Config::default();
        edit(&mut c);
        Dialects::from_config(&c)
    }

    fn with_request<T>(raw: &[u8], f: impl FnOnce(&Request<'_>) -> T) -> T {
        match parse(raw, &Limits::from(&crate::http::config::HttpConfig::default())) {
            Parsed::Complete(req) => f(&req),
            other => panic!("{other:?}"),
        }
    }

    const GET: &[u8] = b"GET /log?event=play&domain=a.b&file_id=1&quality=hd HTTP/1.1\r\n\
User-Agent: UA \"1\"\r\nReferer: https://Site.example/p\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n";

    #[test]
    fn context_from_socket_peer_by_default() {
        let d = dialects(|_| {});
        let mut s = DialectScratch::new("203.0.113.5".parse().unwrap());
        with_request(GET, |req| {
            let c = client_context(req, &d, &mut s);
            assert_eq!(c.ip, Some("203.0.113.5"), "X-Forwarded-For from an untrusted peer is ignored");
            assert_eq!(c.ua, Some("UA \"1\""));
            assert_eq!(c.referer_host, Some("site.example"));
            assert_eq!(c.extra, None, "no keep_params by default");
        });
    }

    #[test]
    fn trusted_peer_forwards_and_switches_turn_parts_off() {
        let d = dialects(|c| {
            c.http.trusted_proxies = vec!["203.0.113.0/24".into()];
            c.ingest.keep_params = vec!["quality".into()];
            c.ingest.user_agent = false;
            c.ingest.referer = false;
        });
        let mut s = DialectScratch::new("203.0.113.5".parse().unwrap());
        with_request(GET, |req| {
            let c = client_context(req, &d, &mut s);
            assert_eq!(c.ip, Some("9.9.9.9"));
            assert_eq!((c.ua, c.referer_host), (None, None));
            assert_eq!(c.extra, Some(r#"{"quality":"hd"}"#));
        });
        let off = dialects(|c| c.ingest.client_ip = false);
        with_request(GET, |req| assert_eq!(client_context(req, &off, &mut s).ip, None));
    }

    #[test]
    fn country_of_the_client_after_the_proxy_rule_even_without_its_ip() {
        let geo =
            std::sync::Arc::new(crate::ingest::geoip::GeoIp::open(&crate::ingest::geoip::test_db()).unwrap());
        let with_geo = |client_ip: bool| {
            dialects(|c| {
                c.http.trusted_proxies = vec!["203.0.113.0/24".into()];
                c.ingest.client_ip = client_ip;
                c.enrich.opened = Some(geo.clone());
            })
        };
        let xff = b"GET /log?event=play&domain=a.b&file_id=1 HTTP/1.1\r\nX-Forwarded-For: 8.8.8.8\r\n\r\n";
        let mut proxied = DialectScratch::new("203.0.113.5".parse().unwrap());
        let d = with_geo(true);
        with_request(xff, |req| {
            let c = client_context(req, &d, &mut proxied);
            assert_eq!((c.ip, c.country.map(|c| c.to_string())), (Some("8.8.8.8"), Some("US".into())));
        });
        let no_ip = with_geo(false);
        with_request(xff, |req| {
            let c = client_context(req, &no_ip, &mut proxied);
            assert_eq!((c.ip, c.country.map(|c| c.to_string())), (None, Some("US".into())));
        });
        let mut direct = DialectScratch::new("127.0.0.1".parse().unwrap());
        with_request(xff, |req| {
            let c = client_context(req, &d, &mut direct);
            assert_eq!((c.ip, c.country), (Some("127.0.0.1"), None), "an untrusted peer's XFF is not read");
        });
        assert!(d.geoip_status().is_some_and(|s| s.info.node_count > 0));
        assert!(dialects(|_| {}).geoip_status().is_none(), "GeoIP off");
    }

    fn take_tick(group: &crate::wal::group::GroupCommit) -> (Vec<u8>, u32) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().expect("runtime");
        let (bytes, tick) = rt.block_on(group.next_tick(Vec::new())).expect("a tick");
        let records = tick.records;
        tick.complete(crate::wal::group::TickOutcome::Written);
        (bytes, records)
    }

    #[test]
    fn a_batch_is_one_tick_and_a_bad_batch_appends_nothing() {
        let d = dialects(|_| {});
        let group = std::rc::Rc::new(crate::wal::group::GroupCommit::new(1 << 20));
        let policy = crate::ingest::intake::Policy::default();
        let intake = Intake::new(policy, group.clone(), std::sync::Arc::default());
        let mut s = DialectScratch::new("127.0.0.1".parse().unwrap());
        let head = b"POST /log HTTP/1.1\r\nContent-Type: application/json\r\nUser-Agent: T\r\n\r\n";
        s.body = br#"[{"event":"a","domain":"a.org","file_id":1},{"event":"b","domain":"a.org","file_id":2},
            {"event":"c","domain":"a.org","file_id":3}]"#
            .to_vec();
        let outcome = with_request(head, |req| post_beacon(req, 5, &intake, &d, &mut s));
        assert!(matches!(outcome, Outcome::Accepted { events: 3, .. }), "{outcome:?}");
        let (bytes, records) = take_tick(&group);
        assert_eq!(records, 3, "the whole batch in one tick, so one WAL write");
        let scan = crate::wal::record::scan(&bytes);
        assert_eq!((scan.records, scan.valid_len), (3, bytes.len()));
        let (ev, ctx, _) = crate::wal::record::decode(&bytes).unwrap();
        assert_eq!((ev.event, ev.ts_ms, ctx.ip, ctx.ua.as_deref()), ("a", 5, Some("127.0.0.1"), Some("T")));

        s.body = br#"[{"event":"a","domain":"a.org","file_id":1},{"event":"b"}]"#.to_vec();
        let outcome = with_request(head, |req| post_beacon(req, 5, &intake, &d, &mut s));
        match outcome {
            Outcome::Rejected { status: 400, message, .. } => {
                assert!(message.starts_with("item 1:"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!group.is_full());
        s.body = b"event=z&domain=a.org&file_id=9".to_vec();
        let form = b"POST /log HTTP/1.1\r\nContent-Type: text/plain\r\n\r\n";
        let outcome = with_request(form, |req| post_beacon(req, 6, &intake, &d, &mut s));
        assert!(matches!(outcome, Outcome::Accepted { events: 1, .. }));
        let (bytes, records) = take_tick(&group);
        assert_eq!(records, 1, "nothing of the rejected batch was appended");
        assert_eq!(crate::wal::record::decode(&bytes).unwrap().0.event, "z");
    }

    #[test]
    fn preflight_rules() {
        let d = dialects(|c| c.http.cors_origins = vec!["http://ok.example".into()]);
        let pre = b"OPTIONS /log HTTP/1.1\r\nOrigin: http://ok.example\r\nAccess-Control-Request-Method: POST\r\n\r\n";
        with_request(pre, |req| assert!(matches!(preflight(req, &d), Outcome::Preflight(Grant::Listed(0)))));
        let bad = b"OPTIONS /log HTTP/1.1\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n";
        with_request(bad, |req| assert!(matches!(preflight(req, &d), Outcome::Rejected { status: 403, .. })));
        let plain = b"OPTIONS /log HTTP/1.1\r\nOrigin: http://ok.example\r\n\r\n";
        with_request(plain, |req| {
            assert!(matches!(preflight(req, &d), Outcome::Rejected { status: 400, .. }))
        });
    }
}
