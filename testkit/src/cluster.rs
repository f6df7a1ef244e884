//! A throw-away Patroni cluster per test: etcd plus one primary and replicas on free loopback
//! ports, fsync off, killed (postmasters included) when the guard drops — also on panic.

use std::time::Duration;

use nix::sys::signal::Signal;
use stack::cluster::{self, Cluster, ClusterOptions, Member};
use stack::os_user;

/// The superuser and replication password of every test cluster (loopback only, lives for one test).
const TEST_PASSWORD: &str = "testkit";

/// A running cluster owned by one test.
pub struct TestCluster {
    cluster: Option<Cluster>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `members` members (one primary, the rest replicas, the last passive when ≥ 3) and
    /// returns once every replica streams and a synchronous standby is set.
    pub async fn start(members: usize) -> anyhow::Result<TestCluster> {
        let run_as = os_user::server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("bookstore-cluster-")
            .tempdir()?;
        let options = ClusterOptions {
            dir: dir.path().to_path_buf(),
            members,
            superuser_password: TEST_PASSWORD.into(),
            replication_password: TEST_PASSWORD.into(),
            run_as,
            durable: false,
            on_parent_death: Signal::SIGTERM,
        };
        let cluster = cluster::start(&options, &|_| {}).await?;
        Ok(TestCluster {
            cluster: Some(cluster),
            _dir: dir,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        // Only `Drop` takes the cluster out.
        self.cluster.as_ref().expect("cluster present until drop")
    }

    /// The current leader, waiting up to a minute for one (after a failover, say).
    pub async fn leader(&self) -> anyhow::Result<&Member> {
        self.cluster()
            .wait_for_leader(Duration::from_secs(60))
            .await
    }

    /// A superuser pool on one member.
    pub async fn admin_pool(
        &self,
        member: &Member,
        database: &str,
    ) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.cluster().admin_url(member, database))
            .await?)
    }

    /// Creates a login role owning a database of the same name on the primary; returns a
    /// multi-host URL listing every member, as services get it.
    pub async fn service_database(&self, name: &str) -> anyhow::Result<String> {
        let password = format!("{name}pw");
        let leader = self.leader().await?;
        let root = self.admin_pool(leader, "postgres").await?;
        stack::accounts::ensure_login_role(&root, name, &password).await?;
        stack::accounts::ensure_owned_database(&root, name, name).await?;
        root.close().await;
        Ok(self.cluster().url(name, &password, name))
    }

    /// SIGKILLs the postmaster of `member` (its Patroni lives on and notices on its next loop).
    pub fn kill_postmaster(&self, member: &Member) -> anyhow::Result<i32> {
        let pid = member
            .postmaster_pid()
            .ok_or_else(|| anyhow::anyhow!("{} has no running postmaster", member.spec.name))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)?;
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cluster_has_one_primary_streaming_replicas_and_a_passive_member()
    -> anyhow::Result<()> {
        let test = TestCluster::start(5).await?;
        let view = test.cluster().view().await?;
        assert_eq!(view.len(), 5);
        assert_eq!(view.iter().filter(|m| m.role == "leader").count(), 1);
        assert_eq!(view.iter().filter(|m| m.role == "sync_standby").count(), 1);
        let passive: Vec<_> = view.iter().filter(|m| m.is_passive()).collect();
        assert_eq!(passive.len(), 1);
        assert_ne!(passive[0].role, "sync_standby");
        let member = test
            .cluster()
            .members
            .iter()
            .find(|m| m.spec.name == passive[0].name)
            .ok_or_else(|| anyhow::anyhow!("passive member not ours"))?;
        let pool = test.admin_pool(member, "postgres").await?;
        let (tag, in_recovery, max_prepared): (Option<String>, bool, String) = sqlx::query_as(
            "SELECT current_setting('bookstore.nofailover', true), pg_is_in_recovery(), \
                    current_setting('max_prepared_transactions')",
        )
        .fetch_one(&pool)
        .await?;
        assert_eq!(tag.as_deref(), Some("on"));
        assert!(in_recovery);
        assert_eq!(max_prepared, "100");
        Ok(())
    }

    /// `up` starts the services only once every replica has replayed the accounts' databases:
    /// a replica whose replay is paused holds `wait_replayed` up until replay resumes, and the
    /// database is there on it when the wait returns. Still paused, the wait gives up after its
    /// time without failing the start. (In Patroni's maintenance mode, which leaves a paused
    /// replay paused.)
    #[tokio::test]
    async fn wait_replayed_returns_once_every_replica_has_the_new_database() -> anyhow::Result<()> {
        let test = TestCluster::start(2).await?;
        let leader = test.leader().await?;
        let replica = test
            .cluster()
            .members
            .iter()
            .find(|m| m.spec.name != leader.spec.name)
            .ok_or_else(|| anyhow::anyhow!("no replica"))?;
        // Patroni resumes a paused replay on its next loop (PostgreSQL 14+), except in maintenance.
        test.cluster()
            .set_maintenance(true, Duration::from_secs(30))
            .await?;
        let on_replica = test.admin_pool(replica, "postgres").await?;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&on_replica)
            .await?;
        let on_leader = test.admin_pool(leader, "postgres").await?;
        sqlx::query("CREATE DATABASE late")
            .execute(&on_leader)
            .await?;

        test.cluster()
            .wait_replayed(Duration::from_millis(300))
            .await?;
        let late_url = test.cluster().admin_url(replica, "late");
        let early = sqlx::PgPool::connect(&late_url).await;
        assert!(early.is_err(), "the paused replica cannot have `late` yet");

        let resume = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sqlx::query("SELECT pg_wal_replay_resume()")
                .execute(&on_replica)
                .await
        });
        test.cluster()
            .wait_replayed(Duration::from_secs(30))
            .await?;
        let late = sqlx::PgPool::connect(&late_url).await?;
        late.close().await;
        resume.await??;
        test.cluster()
            .set_maintenance(false, Duration::from_secs(30))
            .await?;
        Ok(())
    }
}
