//! Acknowledged means durable: 10,000 beacons with MySQL unreachable all get 204, and after a
//! `kill -9` every one of them is in the WAL exactly once, also across a restart.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::wal::wal_file_ids;
use support::{free_closed_port, unique_file_ids, Collector};

/// Sends `ids` as pipelined batches of 50 over `conns` connections; returns the acked ids.
fn send_all(addr: std::net::SocketAddr, ids: &[u64], conns: usize) -> Vec<u64> {
    let per = ids.len().div_ceil(conns);
    let handles: Vec<_> = ids
        .chunks(per)
        .map(|part| {
            let part = part.to_vec();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut acked = Vec::new();
                for batch in part.chunks(50) {
                    let mut req = String::new();
                    for id in batch {
                        req.push_str(&format!(
                            "GET /log?event=play&domain=piratka.biz&file_id={id} HTTP/1.1\r\nHost: t\r\n\r\n"
                        ));
                    }
                    s.write_all(req.as_bytes()).expect("send");
                    let expect =
                        b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n\r\n".len() * batch.len();
                    let mut resp = vec![0u8; expect];
                    s.read_exact(&mut resp).expect("read 204s");
                    assert_eq!(resp.windows(12).filter(|w| w == b"HTTP/1.1 204").count(), batch.len());
                    acked.extend_from_slice(batch);
                }
                acked
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("sender thread")).collect()
}

#[test]
fn ten_thousand_acked_events_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let mut collector = Collector::start(dir.path(), &url, "[server]\ncores = 2\n");
    let ids = unique_file_ids(10_000);
    let mut acked = send_all(collector.addr, &ids, 8);
    assert_eq!(acked.len(), 10_000);
    collector.kill9();

    let mut stored = wal_file_ids(&collector.wal_dir);
    stored.sort_unstable();
    acked.sort_unstable();
    assert_eq!(stored, acked, "every acked event in the WAL exactly once");

    // A restart recovers the WAL as it is and appends after it.
    collector.restart();
    let more = unique_file_ids(500);
    let more_acked = send_all(collector.addr, &more, 2);
    collector.kill9();
    let mut stored = wal_file_ids(&collector.wal_dir);
    stored.sort_unstable();
    let mut expected: Vec<u64> = acked.into_iter().chain(more_acked).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected);
}

#[test]
fn torn_tail_is_truncated_at_startup_and_good_records_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mysql://psc:x@127.0.0.1:{}/psc", free_closed_port());
    let mut collector = Collector::start(dir.path(), &url, "[server]\ncores = 1\n");
    let ids = unique_file_ids(100);
    let acked = send_all(collector.addr, &ids, 1);
    collector.kill9();
    // a power cut leaves half a record and zeroes behind the last good one
    let seg = collector.wal_dir.join("core-0").join("000001.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).expect("segment");
    f.write_all(b"0badc0de {\"ts\":1,\"event\":\"pl").unwrap();
    f.write_all(&[0u8; 512]).unwrap();
    drop(f);
    collector.restart();
    let more = unique_file_ids(10);
    let more_acked = send_all(collector.addr, &more, 1);
    collector.kill9();
    let mut stored = wal_file_ids(&collector.wal_dir);
    stored.sort_unstable();
    let mut expected: Vec<u64> = acked.into_iter().chain(more_acked).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected);
}
