//! `bookstore status`'s view of the cluster: every member's role, state, lag and which is passive,
//! as Patroni's REST API reports them.

use super::ClusterInfo;
use super::patroni::{self, MemberView};

/// Patroni's view, from the first member that answers.
pub async fn fetch(http: &reqwest::Client, info: &ClusterInfo) -> anyhow::Result<Vec<MemberView>> {
    let mut last = anyhow::anyhow!("the cluster has no members");
    for member in &info.members {
        match patroni::cluster_view(http, &member.rest_url).await {
            Ok(view) => return Ok(view),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Prints the topology table (or why it is unavailable).
pub fn print(view: &anyhow::Result<Vec<MemberView>>) {
    let members = match view {
        Ok(members) => members,
        Err(e) => {
            println!("\nthe PostgreSQL cluster's topology is unavailable: {e:#}");
            return;
        }
    };
    println!(
        "\n{:<8} {:<13} {:<10} {:>6} {:>12}  PASSIVE",
        "MEMBER", "ROLE", "STATE", "TL", "LAG (BYTES)"
    );
    for member in members {
        let lag = match (&member.lag, member.role.as_str()) {
            (_, "leader") => "-".to_string(),
            (Some(lag), _) => lag.to_string().trim_matches('"').to_string(),
            (None, _) => "?".to_string(),
        };
        println!(
            "{:<8} {:<13} {:<10} {:>6} {:>12}  {}",
            member.name,
            member.role,
            member.state,
            member.timeline.map(|t| t.to_string()).unwrap_or_default(),
            lag,
            if member.is_passive() {
                "yes (nofailover, nosync)"
            } else {
                ""
            }
        );
    }
}
