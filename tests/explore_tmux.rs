//! `inkdrop explore` end to end: the real binary in a real (tmux) terminal. Keys go in with
//! `tmux send-keys`, the screen comes back with `tmux capture-pane`. Needs tmux; `.ci/run`
//! installs it and sets INKDROP_REQUIRE_TMUX=1 so that CI fails rather than skips.

use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screen(session: &str) -> String {
    tmux(&["capture-pane", "-p", "-t", session])
}

/// Waits until the screen satisfies `done` or `timeout` passes; returns the last screen.
fn wait_until(session: &str, done: impl Fn(&str) -> bool, timeout: Duration) -> String {
    let started = Instant::now();
    loop {
        let s = screen(session);
        if done(&s) || started.elapsed() > timeout {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the screen contains `text` (the binary loads models and generates first).
fn wait_for(session: &str, text: &str, timeout: Duration) -> String {
    wait_until(session, |s| s.contains(text), timeout)
}

#[test]
fn explore_scrubs_and_quits_cleanly_in_a_real_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("INKDROP_REQUIRE_TMUX").is_none(),
            "tmux is required (INKDROP_REQUIRE_TMUX is set) but not installed"
        );
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_inkdrop");
    let session = format!("inkdrop_test_{}", std::process::id());
    // The binary with the default --graphics (as users run it: inside tmux it must not query the
    // terminal, whose unanswered query would swallow the keys), then a marker with its exit
    // status, so we can see it left and how.
    let cmd = format!("{bin} explore --steps 8; echo \"exit status $?\"; sleep 20");
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    // The trace is ready when the x_t panel names its step (the status line counts steps while
    // generating, so "step 1/8" alone would match too early).
    let first = wait_for(&session, "trace ready", Duration::from_secs(60));
    assert!(
        first.contains("x_t  (step 1/8)"),
        "no first step on screen:\n{first}"
    );
    tmux(&["send-keys", "-t", &session, "Right"]);
    let second = wait_for(&session, "x_t  (step 2/8)", Duration::from_secs(5));
    assert!(
        second.contains("x_t  (step 2/8)"),
        "Right did not move:\n{second}"
    );
    tmux(&["send-keys", "-t", &session, "End"]);
    let last = wait_for(&session, "x_t  (step 8/8)", Duration::from_secs(5));
    assert!(
        last.contains("x_t  (step 8/8)"),
        "End did not move:\n{last}"
    );
    tmux(&["send-keys", "-t", &session, "?"]);
    let help = wait_for(&session, "any key closes", Duration::from_secs(5));
    assert!(help.contains("any key closes"), "{help}");
    // Esc closes the help. Wait for that before the next key: an Esc followed at once by a
    // letter reaches the program as Alt+letter.
    tmux(&["send-keys", "-t", &session, "Escape"]);
    let closed = wait_until(
        &session,
        |s| !s.contains("any key closes"),
        Duration::from_secs(5),
    );
    assert!(
        !closed.contains("any key closes"),
        "Esc did not close the help:\n{closed}"
    );
    tmux(&["send-keys", "-t", &session, "f"]);
    let fwd = wait_for(&session, "t 0/999", Duration::from_secs(5));
    assert!(fwd.contains("t 0/999"), "forward mode did not open:\n{fwd}");
    tmux(&["send-keys", "-t", &session, "q"]);
    let after = wait_for(&session, "exit status", Duration::from_secs(5));
    let _ = tmux(&["kill-session", "-t", &session]);
    assert!(
        after.contains("exit status 0"),
        "did not quit cleanly:\n{after}"
    );
    // The alternate screen is gone: nothing of the UI is left on the main screen.
    assert!(
        !after.contains("timeline"),
        "the UI was left on screen:\n{after}"
    );
}

#[test]
fn explore_refuses_to_run_without_a_terminal() {
    let out = Command::new(env!("CARGO_BIN_EXE_inkdrop"))
        .args(["explore"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a terminal"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Bad settings are named before anything else.
    let dir = tempfile::tempdir().unwrap();
    let not_image = dir.path().join("notes.png");
    std::fs::write(&not_image, "not a picture").unwrap();
    for (args, expected) in [
        (vec!["explore", "--steps", "0"], "--steps 0"),
        (
            vec!["explore", "--guidance-scale=-1"],
            "--guidance-scale -1",
        ),
        (
            vec![
                "explore",
                "--forward",
                "--image",
                not_image.to_str().unwrap(),
            ],
            "notes.png",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_inkdrop"))
            .args(&args)
            .output()
            .expect("binary runs");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
