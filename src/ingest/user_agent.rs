//! What a User-Agent says about its client: browser family, OS, device class and whether it is
//! a bot. Pure: no IO.
//!
//! The parser is woothee (the Rust port of Project Woothee: one rule set and one test suite
//! shared by its Java, Ruby, Python, Go, JS and Rust ports), plus three rule sets it lacks:
//! tablets (it calls an iPad or an Android tablet a smartphone), TVs and consoles, and generic
//! automation (headless browsers, HTTP libraries, anything calling itself a bot, crawler or
//! spider). A parse costs ~8 µs (regular expressions), so:
//!
//! Invariants:
//! - a UA is parsed once per distinct text where it is stored (`user_agents` is keyed by its
//!   hash; the sink parses only texts it has not written before), never per request;
//! - on a core, only with `ingest.drop_bots`, [`BotCache`] parses each distinct UA once per
//!   core, in a bounded map keyed by the UA hash; without `drop_bots` no core parses anything;
//! - core and sink call the same [`classify`], so a UA dropped as a bot is exactly a UA stored
//!   with `is_bot = 1`;
//! - strings are bounded: family and OS are names from woothee's dataset, never client text,
//!   at most [`NAME_MAX_BYTES`].

use std::collections::HashMap;

use super::client::ua_hash;

/// Longest family or OS name kept, bytes (woothee's names are < 32).
pub const NAME_MAX_BYTES: usize = 64;

/// The device class stored in `user_agents.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Desktop,
    Mobile,
    Tablet,
    Tv,
    Bot,
}

impl Device {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Tv => "tv",
            Device::Bot => "bot",
        }
    }
}

/// What one User-Agent is. `None` where the parser does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaClass {
    /// Browser or bot family: `Chrome`, `Firefox`, `Safari`, `Googlebot`, …
    pub family: Option<String>,
    /// Operating system: `Windows 10`, `Mac OSX`, `Android`, `iPhone`, …
    pub os: Option<String>,
    pub device: Option<Device>,
    pub is_bot: bool,
}

/// Lower-case markers of automated clients woothee does not list as crawlers. `bot` is
/// matched as a word ending (`Googlebot`, `bot/1.0`, `AdsBot`) but not inside a name like
/// `Cubot` (a phone brand): see [`says_bot`].
const AUTOMATION: &[&str] = &[
    "crawl",
    "spider",
    "slurp",
    "headless",
    "phantomjs",
    "puppeteer",
    "playwright",
    "selenium",
    "lighthouse",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "java/",
    "libwww-perl",
    "httpclient",
    "axios/",
    "node-fetch",
    "scrapy",
    "facebookexternalhit",
    "preview",
];

/// Markers of TVs, streaming sticks and game consoles (as they appear, case-sensitive).
const TV: &[&str] = &[
    "SMART-TV",
    "SmartTV",
    "SMARTTV",
    "HbbTV",
    "Web0S",
    "WebOS TV",
    "Tizen",
    "AppleTV",
    "Apple TV",
    "GoogleTV",
    "Android TV",
    "CrKey",
    "Roku",
    "AFTB",
    "AFTM",
    "AFTS",
    "AFTT",
    "BRAVIA",
    "PlayStation",
    "Xbox",
    "Nintendo",
    "Viera",
    "NetCast",
    "Opera TV",
];

/// Classifies a User-Agent text (see the module doc).
pub fn classify(ua: &str) -> UaClass {
    let parsed = woothee::parser::Parser::new().parse(ua);
    let known =
        |s: &str| (s != "UNKNOWN" && !s.is_empty() && s.len() <= NAME_MAX_BYTES).then(|| s.to_owned());
    let (family, os, category) = match &parsed {
        Some(r) => (known(r.name), known(r.os), r.category),
        None => (None, None, ""),
    };
    let is_bot = category == "crawler" || family.as_deref() == Some("HTTP Library") || says_bot(ua);
    let device = if is_bot {
        Some(Device::Bot)
    } else if TV.iter().any(|m| ua.contains(m)) || category == "appliance" {
        Some(Device::Tv)
    } else if is_tablet(ua, os.as_deref()) {
        Some(Device::Tablet)
    } else {
        match category {
            "pc" => Some(Device::Desktop),
            "smartphone" | "mobilephone" => Some(Device::Mobile),
            _ => None,
        }
    };
    UaClass { family, os, device, is_bot }
}

fn is_tablet(ua: &str, os: Option<&str>) -> bool {
    os == Some("iPad") || ua.contains("Tablet") || (os == Some("Android") && !ua.contains("Mobile"))
}

/// Whether the lower-cased UA carries an automation marker, or `bot` ending a word.
fn says_bot(ua: &str) -> bool {
    let lower = ua.to_ascii_lowercase();
    if AUTOMATION.iter().any(|m| lower.contains(m)) {
        return true;
    }
    // `bot` ending a word (`Googlebot/2.1`, `AdsBot-Google`, `bot;`), but not `Cubot` (a
    // phone brand) nor inside a word (`bottle`).
    lower.match_indices("bot").any(|(at, _)| {
        let ends_word = !lower.as_bytes().get(at + 3).is_some_and(u8::is_ascii_alphanumeric);
        ends_word && lower.get(at.saturating_sub(2)..at) != Some("cu")
    })
}

/// One core's verdicts, bot or not, by UA hash: the core parses a distinct UA once, then
/// answers from memory. Bounded: when it holds `max_entries`, it is emptied and refills (a
/// flood of distinct UAs costs one parse each, never memory).
#[derive(Debug)]
pub struct BotCache {
    verdicts: HashMap<u64, bool>,
    max_entries: usize,
    /// Times it was full and emptied (`ingest.bot_cache_entries` hit).
    resets: u64,
}

impl BotCache {
    pub fn new(max_entries: usize) -> BotCache {
        BotCache {
            verdicts: HashMap::with_capacity(max_entries.min(1024)),
            max_entries: max_entries.max(1),
            resets: 0,
        }
    }

    /// Whether `ua` is a bot, parsing it only if this core has not seen it.
    pub fn is_bot(&mut self, ua: &str) -> bool {
        let hash = ua_hash(ua);
        if let Some(&verdict) = self.verdicts.get(&hash) {
            return verdict;
        }
        if self.verdicts.len() >= self.max_entries {
            self.verdicts.clear();
            self.resets += 1;
        }
        let verdict = classify(ua).is_bot;
        self.verdicts.insert(hash, verdict);
        verdict
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    pub fn resets(&self) -> u64 {
        self.resets
    }

    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_WIN: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                              Chrome/120.0.0.0 Safari/537.36";
    const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    fn class(ua: &str) -> (Option<String>, Option<String>, Option<&'static str>, bool) {
        let c = classify(ua);
        (c.family, c.os, c.device.map(Device::as_str), c.is_bot)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn browsers() {
        assert_eq!(class(CHROME_WIN), (s("Chrome"), s("Windows 10"), Some("desktop"), false));
        let firefox = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0";
        assert_eq!(class(firefox), (s("Firefox"), s("Mac OSX"), Some("desktop"), false));
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 \
                      (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
        assert_eq!(class(iphone), (s("Safari"), s("iPhone"), Some("mobile"), false));
        let pixel = "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) \
                     Chrome/120.0.0.0 Mobile Safari/537.36";
        assert_eq!(class(pixel), (s("Chrome"), s("Android"), Some("mobile"), false));
    }

    #[test]
    fn tablets_and_tvs() {
        let ipad = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                    Version/16.6 Mobile/15E148 Safari/604.1";
        assert_eq!(class(ipad).2, Some("tablet"));
        let galaxy_tab = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) \
                          Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(class(galaxy_tab).2, Some("tablet"));
        for tv in [
            "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/538.1 (KHTML, like Gecko) Version/6.0 TV Safari/538.1",
            "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.79 Safari/537.36",
            "Roku/DVP-9.10 (519.10E04111A)",
            "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        ] {
            assert_eq!(class(tv).2, Some("tv"), "{tv}");
            assert!(!class(tv).3, "{tv}");
        }
    }

    #[test]
    fn bots() {
        assert_eq!(class(GOOGLEBOT), (s("Googlebot"), None, Some("bot"), true));
        for bot in [
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "curl/8.4.0",
            "python-requests/2.31",
            "AdsBot-Google (+http://www.google.com/adsbot.html)",
            "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
            "facebookexternalhit/1.1",
            "SomeNewCrawler/0.1",
        ] {
            assert!(class(bot).3, "{bot}");
            assert_eq!(class(bot).2, Some("bot"), "{bot}");
        }
        let cubot = "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) \
                     Chrome/120.0.0.0 Mobile Safari/537.36";
        assert!(!class(cubot).3, "a phone brand is not a bot");
        assert!(!says_bot("Mozilla/5.0 bottle/1"));
    }

    #[test]
    fn unknown_texts_are_nulls() {
        assert_eq!(class("wrk"), (None, None, None, false));
        assert_eq!(class(""), (None, None, None, false));
        let c = classify(&"x".repeat(512));
        assert!(c.family.is_none() && !c.is_bot);
    }

    #[test]
    fn bot_cache_parses_once_and_stays_bounded() {
        let mut cache = BotCache::new(2);
        assert!(cache.is_bot(GOOGLEBOT));
        assert!(!cache.is_bot(CHROME_WIN));
        assert!(cache.is_bot(GOOGLEBOT), "from memory");
        assert_eq!(cache.len(), 2);
        assert!(!cache.is_bot("third"));
        assert_eq!(cache.len(), 1, "full: emptied, then refilled");
        assert_eq!(cache.resets(), 1);
        assert!(!cache.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_text_classifies_with_bounded_names(ua in "\\PC{0,300}") {
            let c = classify(&ua);
            proptest::prop_assert!(c.family.as_ref().is_none_or(|f| f.len() <= NAME_MAX_BYTES));
            proptest::prop_assert!(c.os.as_ref().is_none_or(|o| o.len() <= NAME_MAX_BYTES));
            proptest::prop_assert_eq!(c.is_bot, c.device == Some(Device::Bot));
        }
    }
}
