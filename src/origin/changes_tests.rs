//! Unit tests of the change set (`changes.rs`), kept beside it.
use super::*;

#[test]
fn an_object_older_than_the_write_beyond_the_tolerance_predates_it() {
    let write = 1_000 * 1_000_000_000 + 500_000_000; // 1000.5 s
    assert!(predates(Some(1_000 - CLOCK_TOLERANCE_SECS - 1), write));
    assert!(!predates(Some(1_000 - CLOCK_TOLERANCE_SECS), write));
    assert!(!predates(Some(1_001), write));
    assert!(!predates(None, write), "unknown time: HeadObject decides");
}

#[test]
fn start_after_is_just_before_the_key() {
    assert_eq!(before("blog/a.html"), "blog/a.htm");
    assert!(before("blog/a.html").as_str() < "blog/a.html");
    assert_eq!(before("x"), "");
}

#[test]
fn a_set_is_sorted_deduplicated_and_all_open() {
    let set = ChangeSet::of(["b", "a", "b", "c/d", "a"]);
    assert_eq!((set.len(), set.open()), (3, 3));
    let rels: Vec<&str> = (0..set.len()).map(|i| set.rel(i)).collect();
    assert_eq!(rels, ["a", "b", "c/d"]);
    assert_eq!(set.find("b"), Some(1));
    assert_eq!((set.find("c"), set.find("")), (None, None));
    let sorted = ChangeSet::of(["a", "a", "b", "c/d"]);
    assert_eq!(sorted.names, "abc/d", "each path once, in key order");
}

#[test]
fn a_change_costs_64_bytes_beside_its_path() {
    assert!(
        std::mem::size_of::<Entry>() <= 64,
        "{}",
        std::mem::size_of::<Entry>()
    );
}

#[tokio::test]
async fn a_verified_file_written_again_is_open_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a"), b"1").expect("write");
    let mut set = ChangeSet::of(["a", "b"]);
    let stamp = local_stamp(&dir.path().join("a"));
    set.entries[0].state = State::Verified(stamp);
    set.entries[1].state = State::Verified(None);
    set.open = 0;
    assert_eq!(
        set.rewritten(dir.path(), &["a".into(), "b".into()]).await,
        0,
        "unchanged"
    );
    std::fs::write(dir.path().join("a"), b"22").expect("rewrite");
    std::fs::write(dir.path().join("b"), b"new").expect("appear");
    assert_eq!(
        set.rewritten(dir.path(), &["a".into(), "b".into(), "c".into()])
            .await,
        2
    );
    assert_eq!(set.open(), 2);
}

// The local side of a round looked up every open change from the last page's start to the end
// of the set (13,000 of 20,000 here, again in every round): at 200,000 changes the daemon's CPU
// doubled and its peak RSS went from 37 to 85 MB.
#[test]
fn a_round_looks_up_on_disk_no_more_changes_than_its_pages_can_cover() {
    let rels: Vec<String> = (0..20_000).map(|i| format!("d/f{i:05}.html")).collect();
    let set = ChangeSet::of(rels.iter().map(String::as_str));
    let mut todo = VecDeque::from([(0, set.len())]);
    let round = set.next_round(&mut todo);
    assert_eq!(round.len(), PARALLEL_PAGES);
    let wanted = set.wanted(&round);
    for (page, w) in round.iter().zip(&wanted) {
        assert!(w.len() <= PAGE_KEYS, "{page:?} wants {}", w.len());
        assert_eq!(w.first(), Some(&page.0));
    }
    assert_eq!(
        wanted.iter().map(Vec::len).sum::<usize>(),
        PARALLEL_PAGES * PAGE_KEYS
    );
}

// Twice the pages a round halve a pass's time; paced by that time alone, a wait of 200 pages a
// pass would list twice as often and make twice the calls.
#[test]
fn a_pass_of_parallel_pages_is_paced_by_their_count_not_only_their_time() {
    let ms = Duration::from_millis;
    let pass = |time, pages| Pass {
        repeated: ms(time),
        repeated_calls: pages,
        ..Pass::default()
    };
    // 200 pages answered in 1.3 s (16 at a time): 200 × 40 ms.
    assert_eq!(pass(1_300, 200).paced(), ms(8_000));
    // The same pages, 8 or 16 at a time: the same pace.
    assert_eq!(pass(2_600, 200).paced(), pass(1_300, 200).paced());
    // A slow S3 (1 s a page): its time.
    assert_eq!(pass(13_000, 200).paced(), ms(13_000));
    // Five pages, quickly: 200 ms, within the free second.
    assert_eq!(pass(150, 5).paced(), ms(200));
}
