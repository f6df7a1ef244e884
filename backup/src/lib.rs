//! Consistent backups from a replica, and restores that prove themselves.
//!
//! `bookstore backup` reads a libpq multi-host URL ([`url`]), asks every host who it is
//! ([`topology`]), picks a passive or asynchronous replica, pauses its WAL replay ([`pause`]) for the
//! milliseconds it takes to export one [`snapshot`] per database — so all databases are dumped at
//! one LSN — resumes replay on every path it controls ([`marker`] covers the one it cannot:
//! SIGKILL), dumps those snapshots with the machine's pg_dump ([`tools`]), and writes a
//! [`manifest`] with checksums and per-table [`fingerprint`]s. `bookstore restore` checks the
//! checksums, restores into a named database or a [`scratch`] server, and with `--verify` compares
//! every table with the source at the backup's LSN. See docs/BACKUP.md.

pub mod backup;
pub mod fingerprint;
pub mod manifest;
pub mod marker;
pub mod pause;
pub mod progress;
pub mod restore;
pub mod scratch;
pub mod snapshot;
pub mod tools;
pub mod topology;
pub mod url;

pub use backup::BackupArgs;
pub use restore::RestoreArgs;
