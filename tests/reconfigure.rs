//! A running device switched to another function.

mod common;

use std::time::Duration;

use common::*;
use shmnet::functions::{FunctionConfig, build};

#[test]
fn running_device_switches_function() {
    let (lan, wan) = (unique("lan"), unique("wan"));
    // Starts as a plain pass-through device: nothing listens on port 7.
    let server = settings("server", &lan, &wan, 2, 1500, r#"{ kind = "passthrough" }"#);
    let (sh, st) = spawn(&server);
    assert_eq!(sh.stats().function, "passthrough");

    let probe = r#"{ kind = "probe", tcp = ["10.0.0.2:7"], bytes = 200000, timeout = "300ms" }"#;
    let (ch, ct) = spawn(&settings("client", &lan, &wan, 1, 1500, probe));
    let report = wait_finished(&ch, Duration::from_secs(30));
    assert!(
        report[0].contains("timed out"),
        "nothing should echo yet: {report:?}"
    );
    ch.stop();
    ct.join().unwrap();

    // Switch the live device to an echo server.
    let echo: FunctionConfig = toml::from_str("kind = \"echo\"\nport = 7").unwrap();
    sh.replace_function(build(&echo).unwrap());
    let probe = r#"{ kind = "probe", tcp = ["10.0.0.2:7"], udp = ["10.0.0.2:7"], bytes = 200000 }"#;
    let (ch, ct) = spawn(&settings("client2", &lan, &wan, 3, 1500, probe));
    let report = wait_finished(&ch, Duration::from_secs(30));
    assert!(report.iter().all(|l| l.contains("intact")), "{report:?}");
    assert_eq!(sh.stats().function, "echo");

    // And back: the echo function's sockets are gone with it.
    sh.replace_function(build(&FunctionConfig::Passthrough).unwrap());
    ch.stop();
    ct.join().unwrap();
    let probe = r#"{ kind = "probe", udp = ["10.0.0.2:7"], timeout = "600ms" }"#;
    let (ch, ct) = spawn(&settings("client3", &lan, &wan, 4, 1500, probe));
    let report = wait_finished(&ch, Duration::from_secs(30));
    assert!(report[0].contains("timed out"), "{report:?}");
    assert_eq!(sh.stats().function, "passthrough");
    ch.stop();
    sh.stop();
    ct.join().unwrap();
    st.join().unwrap();
}
