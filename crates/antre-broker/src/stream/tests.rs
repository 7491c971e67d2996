use std::sync::Arc;

use antre_amqp::{BasicProperties, FieldTable};
use bytes::Bytes;

use super::*;
use crate::clock::ManualClock;

fn open(dir: &Path, clock: Arc<ManualClock>, args: FieldTable) -> Arc<Stream> {
    Stream::open("/", "events", args, dir, clock).unwrap()
}

/// A stream whose chunks carry Bloom filters of `size` bytes.
fn with_filters(dir: &Path, size: i64) -> Arc<Stream> {
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-filter-size-bytes",
        antre_amqp::FieldValue::I64(size),
    );
    open(dir, Arc::new(ManualClock::at(0)), args)
}

fn msg(body: &str) -> Message {
    Message::new(
        "".into(),
        "events".into(),
        BasicProperties::default(),
        Bytes::from(body.to_owned()),
    )
}

/// Every record a reader can read now, as (offset, body).
fn drain(reader: &mut Reader) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        for (offset, raw) in chunk.records().unwrap() {
            if offset < reader.skip_below() {
                continue;
            }
            let m = record::from_record(raw, "events", 0).unwrap();
            out.push((offset, String::from_utf8(m.body.to_vec()).unwrap()));
        }
    }
    out
}

fn bodies(records: &[(u64, String)]) -> Vec<&str> {
    records.iter().map(|(_, b)| b.as_str()).collect()
}

#[test]
fn readers_start_where_their_offset_spec_says() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_000));
    let s = open(dir.path(), Arc::clone(&clock), FieldTable::default());
    for i in 0..3 {
        s.publish(&msg(&format!("a{i}"))).unwrap();
    }
    s.flush();
    clock.advance(1_000);
    for i in 0..2 {
        s.publish(&msg(&format!("b{i}"))).unwrap();
    }
    s.flush();
    let mut next = s.reader(OffsetSpec::Next).unwrap();
    let first = drain(&mut s.reader(OffsetSpec::First).unwrap());
    assert_eq!(bodies(&first), ["a0", "a1", "a2", "b0", "b1"]);
    assert_eq!(first[3].0, 3);
    assert_eq!(
        bodies(&drain(&mut s.reader(OffsetSpec::Last).unwrap())),
        ["b0", "b1"]
    );
    assert_eq!(
        bodies(&drain(&mut s.reader(OffsetSpec::Offset(2)).unwrap())),
        ["a2", "b0", "b1"]
    );
    assert_eq!(
        bodies(&drain(&mut s.reader(OffsetSpec::Timestamp(1_500)).unwrap())),
        ["b0", "b1"]
    );
    assert!(drain(&mut next).is_empty());
    s.publish(&msg("c")).unwrap();
    s.flush();
    assert_eq!(drain(&mut next), [(5, "c".to_owned())]);
    // Past the end: waits for that offset.
    let mut ahead = s.reader(OffsetSpec::Offset(8)).unwrap();
    for b in ["d", "e", "f"] {
        s.publish(&msg(b)).unwrap();
    }
    s.flush();
    assert_eq!(drain(&mut ahead), [(8, "f".to_owned())]);
}

#[test]
fn a_waiting_reader_is_woken_by_the_next_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Arc::new(ManualClock::at(0)),
        FieldTable::default(),
    );
    let woken = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&woken);
    assert!(!s.wait(
        0,
        StreamWaker::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        })
    ));
    s.publish(&msg("x")).unwrap();
    assert_eq!(
        woken.load(Ordering::Relaxed),
        0,
        "the open chunk is not visible yet"
    );
    s.flush();
    assert_eq!(woken.load(Ordering::Relaxed), 1);
    assert!(
        s.wait(0, StreamWaker::new(|| {})),
        "data there: no need to wait"
    );
}

#[test]
fn a_reopened_stream_keeps_its_offsets_and_appends_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(0));
    let s = open(dir.path(), Arc::clone(&clock), FieldTable::default());
    for i in 0..5 {
        s.publish(&msg(&i.to_string())).unwrap();
    }
    s.close();
    let s = open(dir.path(), clock, FieldTable::default());
    s.publish(&msg("5")).unwrap();
    s.flush();
    let all = drain(&mut s.reader(OffsetSpec::First).unwrap());
    let want: Vec<(u64, String)> = (0..6).map(|i| (i, i.to_string())).collect();
    assert_eq!(all, want);
    assert_eq!(s.info().last_offset, Some(5));
}

#[test]
fn retention_by_size_drops_old_segments_and_first_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length-bytes", antre_amqp::FieldValue::I64(5_000));
    args.insert(
        "x-stream-max-segment-size-bytes",
        antre_amqp::FieldValue::I64(1_000),
    );
    let s = open(dir.path(), Arc::new(ManualClock::at(0)), args);
    let mut reader = s.reader(OffsetSpec::First).unwrap();
    for i in 0..200 {
        s.publish(&msg(&format!("{i:0>100}"))).unwrap();
        s.flush();
    }
    let info = s.info();
    assert!(info.bytes <= 6_000, "{info:?}");
    assert!(info.first_offset > 0);
    // A reader left behind goes on from the oldest segment left.
    let got = drain(&mut reader);
    assert!(
        got.len() < 200 && got.last().unwrap().0 == 199,
        "{}",
        got.len()
    );
    let first = drain(&mut s.reader(OffsetSpec::First).unwrap());
    assert_eq!(first[0].0, s.info().first_offset);
}

#[test]
fn retention_by_age_needs_time_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-age", antre_amqp::FieldValue::string("10s"));
    args.insert(
        "x-stream-max-segment-size-bytes",
        antre_amqp::FieldValue::I64(500),
    );
    let clock = Arc::new(ManualClock::at(0));
    let s = open(dir.path(), Arc::clone(&clock), args);
    for i in 0..20 {
        s.publish(&msg(&format!("{i:0>100}"))).unwrap();
        s.flush();
    }
    s.tick(5_000);
    assert_eq!(s.info().first_offset, 0);
    clock.advance(20_000);
    s.tick(20_000);
    let info = s.info();
    assert_eq!(info.segments, 1, "only the segment being written stays");
    assert!(info.first_offset > 0);
}

fn tagged(body: &str, value: &str) -> Message {
    let mut headers = FieldTable::default();
    headers.insert(
        args::FILTER_VALUE_HEADER,
        antre_amqp::FieldValue::string(value),
    );
    let properties = BasicProperties {
        headers: Some(headers),
        ..Default::default()
    };
    Message::new(
        "".into(),
        "events".into(),
        properties,
        Bytes::from(body.to_owned()),
    )
}

#[test]
fn filtered_readers_skip_chunks_by_their_bloom_filters_of_the_asked_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = with_filters(dir.path(), 64);
    for (i, region) in ["emea", "apac", "emea"].iter().enumerate() {
        s.publish(&tagged(&format!("{region}-{i}"), region))
            .unwrap();
        s.flush();
    }
    s.publish(&msg("plain")).unwrap();
    s.flush();
    let mut all = s.reader(OffsetSpec::First).unwrap();
    let chunk = all.next_chunk().unwrap().unwrap();
    assert_eq!(chunk.header.bloom_size, 64);
    let filtered = |values: &[&str], match_unfiltered| {
        let mut r = s.reader(OffsetSpec::First).unwrap();
        r.set_filter(Some(antre_stream_proto::chunk::ChunkFilter {
            values: values.iter().map(|v| v.to_string()).collect(),
            match_unfiltered,
        }));
        drain(&mut r)
    };
    assert_eq!(bodies(&filtered(&["emea"], false)), ["emea-0", "emea-2"]);
    assert_eq!(bodies(&filtered(&["apac"], true)), ["apac-1", "plain"]);
    assert!(filtered(&["amer"], false).is_empty());
}

#[test]
fn a_filter_size_outside_16_to_255_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [0, 15, 256] {
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-filter-size-bytes",
            antre_amqp::FieldValue::I64(bad),
        );
        let e = Stream::open(
            "/",
            "events",
            args,
            dir.path(),
            Arc::new(ManualClock::at(0)),
        )
        .unwrap_err();
        assert_eq!(
            e,
            BrokerError::PreconditionFailed(format!(
                "invalid arg 'x-stream-filter-size-bytes' for queue 'events' in vhost '/': {{invalid_filter_size,{bad}}}"
            ))
        );
    }
}

/// A message as its group replicates it to a stream's members.
fn rec(leader: &Stream, body: &str) -> Bytes {
    leader.replica_record(&msg(body))
}

/// A replica applies its group's messages at the offsets the leader gave
/// them: those it holds already (applied again after a restart) are
/// skipped, and a gap starts the log over at the group's offset.
#[test]
fn a_replica_appends_at_its_groups_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_000));
    let s = open(dir.path(), Arc::clone(&clock), FieldTable::default());
    let (m0, m1, m2) = (rec(&s, "m0"), rec(&s, "m1"), rec(&s, "m2"));
    s.replica_append([(0, &m0), (1, &m1)]).unwrap();
    s.replica_append([(1, &m1), (2, &m2)]).unwrap();
    assert_eq!(s.next_offset(), 3);
    let all = drain(&mut s.reader(OffsetSpec::First).unwrap());
    assert_eq!(all, [(0, "m0".into()), (1, "m1".into()), (2, "m2".into())]);

    let m9 = rec(&s, "m9");
    s.replica_append([(9, &m9)]).unwrap();
    assert_eq!(s.next_offset(), 10);
    assert_eq!(
        drain(&mut s.reader(OffsetSpec::First).unwrap()),
        [(9, "m9".into())]
    );
}

/// A member far behind installs another's chunks: it then reads the same
/// records at the same offsets, and a reader it had goes on past what it
/// handed out, reading the new files rather than the removed ones (whose
/// first segment has the same name).
#[test]
fn a_replica_installs_another_members_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_000));
    let leader = open(
        &dir.path().join("leader"),
        Arc::clone(&clock),
        FieldTable::default(),
    );
    let behind = open(
        &dir.path().join("behind"),
        Arc::clone(&clock),
        FieldTable::default(),
    );
    let messages: Vec<Bytes> = (0..6).map(|i| rec(&leader, &format!("r{i}"))).collect();
    leader
        .replica_append(messages.iter().enumerate().map(|(i, m)| (i as u64, m)))
        .unwrap();
    behind
        .replica_append([(0, &messages[0]), (1, &messages[1])])
        .unwrap();
    let mut reader = behind.reader(OffsetSpec::First).unwrap();
    assert_eq!(bodies(&drain(&mut reader)), ["r0", "r1"]);

    let mut chunks = leader.replica_chunks().unwrap();
    assert_eq!(chunks.next_offset(), 6);
    let all = std::iter::from_fn(|| chunks.next_chunk().transpose());
    assert!(behind.replica_install(6, all).unwrap() > 0);
    behind.replica_sync().unwrap();
    assert_eq!(behind.next_offset(), 6);
    assert_eq!(
        drain(&mut reader),
        [
            (2, "r2".into()),
            (3, "r3".into()),
            (4, "r4".into()),
            (5, "r5".into())
        ]
    );
    let all = drain(&mut behind.reader(OffsetSpec::First).unwrap());
    assert_eq!(bodies(&all), ["r0", "r1", "r2", "r3", "r4", "r5"]);

    // It goes on from there with what the group applies next.
    let m6 = rec(&leader, "r6");
    behind.replica_append([(6, &m6)]).unwrap();
    assert_eq!(drain(&mut reader), [(6, "r6".into())]);
}

/// A replica's chunks carry the filter values the leader read off the
/// messages: a filtered reader skips chunks on every member alike.
#[test]
fn a_replicas_chunks_carry_the_filter_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = with_filters(dir.path(), 32);
    for (i, region) in ["emea", "apac"].iter().enumerate() {
        let r = s.replica_record(&tagged(&format!("{region}-{i}"), region));
        s.replica_append([(i as u64, &r)]).unwrap();
    }
    let mut r = s.reader(OffsetSpec::First).unwrap();
    r.set_filter(Some(antre_stream_proto::chunk::ChunkFilter {
        values: vec!["apac".into()],
        match_unfiltered: false,
    }));
    assert_eq!(bodies(&drain(&mut r)), ["apac-1"]);
}

/// A replica's chunks carry the leader's time, not the member's: a start
/// by timestamp and retention by age see the same chunks on every member.
#[test]
fn a_replicas_chunks_carry_the_leaders_time() {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(
        &dir.path().join("leader"),
        Arc::new(ManualClock::at(5_000)),
        FieldTable::default(),
    );
    let member = open(
        &dir.path().join("member"),
        Arc::new(ManualClock::at(1_000)),
        FieldTable::default(),
    );
    let r = rec(&leader, "m0");
    member.replica_append([(0, &r)]).unwrap();
    let chunk = member
        .reader(OffsetSpec::First)
        .unwrap()
        .next_chunk()
        .unwrap()
        .unwrap();
    assert_eq!(chunk.header.timestamp, 5_000);
}

/// A named stream-protocol publisher's records carry its name and
/// publishing ids to every member, which tracks them as the leader does:
/// after a failover the new leader deduplicates where the old one left
/// off, also once the member restarted. Stored offsets applied by a member
/// read back as on a single node.
#[test]
fn a_replica_tracks_named_publishers_and_stored_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_000));
    let leader = open(
        &dir.path().join("leader"),
        Arc::clone(&clock),
        FieldTable::default(),
    );
    let member_dir = dir.path().join("member");
    let member = open(&member_dir, Arc::clone(&clock), FieldTable::default());
    let published = |id: u64, body: &str, filter: Option<&str>| PublishedRecord {
        id,
        filter_value: filter.map(str::to_owned),
        message: record::to_record(&msg(body)),
    };
    let records = [
        leader.replica_published(&published(7, "p7", Some("emea")), Some("payer")),
        leader.replica_published(&published(8, "p8", None), Some("payer")),
        leader.replica_published(&published(1, "anon", None), None),
    ];
    member
        .replica_append(records.iter().enumerate().map(|(i, r)| (i as u64, r)))
        .unwrap();
    member.replica_store_offset("audit", 1).unwrap();
    assert_eq!(member.last_sequence("payer"), Some(8));
    assert_eq!(member.query_offset("audit"), Some(1));
    assert_eq!(
        drain(&mut member.reader(OffsetSpec::First).unwrap()),
        [(0, "p7".into()), (1, "p8".into()), (2, "anon".into())]
    );
    member.replica_sync().unwrap();
    member.close();
    drop(member);
    let member = open(&member_dir, clock, FieldTable::default());
    assert_eq!(member.last_sequence("payer"), Some(8));
    assert_eq!(member.query_offset("audit"), Some(1));
    assert_eq!(member.next_offset(), 3);
}
