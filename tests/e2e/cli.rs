//! The operator commands speak in clear sentences: status lists health, conflicts are explained.

use std::process::Command;

use crate::{bookstore, start, up_command};

#[tokio::test]
async fn status_lists_every_process_as_ready() -> anyhow::Result<()> {
    let platform = start().await?;
    let output = Command::new(bookstore())
        .args(["status", "--dir"])
        .arg(platform.dir())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    // The gateway's view: every service instance with a closed breaker, and each service breaker.
    for instance in platform
        .processes("books")
        .iter()
        .chain(&platform.processes("orders"))
        .chain(&platform.processes("warehouse"))
    {
        let port = instance.url.rsplit(':').next().unwrap_or_default();
        let id = format!("{}-{port}", instance.kind);
        let line = text.lines().find(|l| l.contains(&id)).unwrap_or_default();
        assert!(line.contains("closed"), "{id}: {line:?}\n{text}");
    }
    assert_eq!(text.matches("service breaker closed").count(), 3, "{text}");
    for name in [
        "postgres",
        "discovery",
        "books-1",
        "books-2",
        "orders-1",
        "orders-2",
        "warehouse",
        "gateway",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default();
        assert!(line.ends_with("ready"), "{name}: {line:?}\n{text}");
    }
    Ok(())
}

#[tokio::test]
async fn a_second_up_in_the_same_directory_or_on_a_busy_port_explains_itself() -> anyhow::Result<()>
{
    let platform = start().await?;
    let second = up_command(platform.dir(), "0").output()?;
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");

    let busy_port = platform
        .gateway_url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let other_dir = tempfile::tempdir()?;
    let busy = up_command(other_dir.path(), &busy_port).output()?;
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        stderr.contains(&format!("port {busy_port}")) && stderr.contains("already in use"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn status_without_a_running_platform_says_how_to_start_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(bookstore())
        .args(["status", "--dir"])
        .arg(dir.path())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bookstore up"), "{stderr}");
    Ok(())
}
