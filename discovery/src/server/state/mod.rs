//! The catalog: every registered instance with its checks, and the raft-like index that blocking queries
//! wait on. Pure and synchronous: every operation takes `now` and returns the [`Change`]s it made, and
//! the index rises exactly when something a query could see changed (never on a no-op).

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use crate::server::checks::{Check, CheckKind, Status};
use crate::server::registration::NewService;

mod upkeep;

pub use upkeep::ProbeJob;

/// A registered service instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: HashMap<String, String>,
    pub checks: Vec<Check>,
    /// The index of the first registration of this ID.
    pub create_index: u64,
    /// The index of the latest registration; tells stale probe results apart.
    pub modify_index: u64,
}

impl Instance {
    /// Consul's `?passing`: every check passing (a warning is not passing).
    pub fn is_passing(&self) -> bool {
        self.checks.iter().all(|c| c.status == Status::Passing)
    }

    fn is_defined_as(&self, service: &NewService) -> bool {
        self.name == service.name
            && self.address == service.address
            && self.port == service.port
            && self.tags == service.tags
            && self.meta == service.meta
            && self
                .checks
                .iter()
                .map(|c| &c.spec)
                .eq(service.checks.iter())
    }
}

/// Something that changed; the registry logs these and tests assert on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Registered {
        id: String,
        name: String,
        replaced: bool,
    },
    Deregistered {
        id: String,
        name: String,
    },
    StatusChanged {
        check_id: String,
        service_id: String,
        from: Status,
        to: Status,
    },
    Reaped {
        id: String,
        name: String,
        check_id: String,
    },
}

/// Why a check update was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// No check has this ID (the registry may have restarted and forgotten it).
    Unknown,
    /// The check exists but is polled by the registry, so it takes no reports.
    NotTtl,
}

#[derive(Debug)]
pub struct Catalog {
    instances: BTreeMap<String, Instance>,
    index: u64,
    /// The index of the last change to each service name, so a query for one service is not woken by
    /// every other. Kept after the last instance leaves so that removal is seen as a change.
    name_index: HashMap<String, u64>,
}

impl Default for Catalog {
    fn default() -> Self {
        // Consul's indexes start above 0: `?index=0` means "do not block".
        Catalog {
            instances: BTreeMap::new(),
            index: 1,
            name_index: HashMap::new(),
        }
    }
}

impl Catalog {
    /// The index of the whole catalog (`/v1/catalog/services`).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The index of one service's answers; an unknown name falls back to the catalog's index.
    pub fn service_index(&self, name: &str) -> u64 {
        self.name_index.get(name).copied().unwrap_or(self.index)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    pub fn instances_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances.values().filter(move |i| i.name == name)
    }

    /// Adds or replaces an instance. Like Consul, a check that keeps its ID across a re-registration
    /// keeps its status (no flapping); new checks start at their `Status`, else critical. Repeating
    /// an identical registration only restarts the TTLs and is no change. `Err` names a check ID that
    /// another service already uses.
    pub fn register(&mut self, service: NewService, now: Instant) -> Result<Vec<Change>, String> {
        for spec in &service.checks {
            if let Some(owner) = self
                .owner_of(&spec.id)
                .filter(|owner| owner.id != service.id)
            {
                return Err(format!(
                    "CheckID {:?} already belongs to service {:?}",
                    spec.id, owner.id
                ));
            }
        }
        if let Some(same) = self
            .instances
            .get_mut(&service.id)
            .filter(|old| old.is_defined_as(&service))
        {
            for check in &mut same.checks {
                check.restart_ttl(now);
            }
            return Ok(Vec::new());
        }
        let previous = self.instances.remove(&service.id);
        if let Some(old) = previous.as_ref().filter(|old| old.name != service.name) {
            // The ID moved to another name: queries for the old name must see it leave.
            self.bump(&old.name);
        }
        let index = self.bump(&service.name);
        let checks = service
            .checks
            .into_iter()
            .map(|spec| {
                let mut check = Check::new(spec, now, index);
                if let Some(old) = previous
                    .iter()
                    .flat_map(|p| &p.checks)
                    .find(|c| c.spec.id == check.spec.id)
                {
                    check.keep_state_of(old);
                }
                check
            })
            .collect();
        let change = Change::Registered {
            id: service.id.clone(),
            name: service.name.clone(),
            replaced: previous.is_some(),
        };
        let instance = Instance {
            id: service.id,
            name: service.name,
            address: service.address,
            port: service.port,
            tags: service.tags,
            meta: service.meta,
            checks,
            create_index: previous.map_or(index, |p| p.create_index),
            modify_index: index,
        };
        self.instances.insert(instance.id.clone(), instance);
        Ok(vec![change])
    }

    /// Removes an instance; unknown IDs are no change.
    pub fn deregister(&mut self, id: &str) -> Vec<Change> {
        match self.instances.remove(id) {
            Some(gone) => {
                self.bump(&gone.name);
                vec![Change::Deregistered {
                    id: gone.id,
                    name: gone.name,
                }]
            }
            None => Vec::new(),
        }
    }

    /// A TTL report (`/v1/agent/check/pass|warn|fail|update`).
    pub fn report(
        &mut self,
        check_id: &str,
        status: Status,
        output: String,
        now: Instant,
    ) -> Result<Vec<Change>, CheckError> {
        let instance = self
            .instances
            .values_mut()
            .find(|i| i.checks.iter().any(|c| c.spec.id == check_id))
            .ok_or(CheckError::Unknown)?;
        let (service_id, name) = (instance.id.clone(), instance.name.clone());
        let check = instance
            .checks
            .iter_mut()
            .find(|c| c.spec.id == check_id)
            .ok_or(CheckError::Unknown)?;
        if !matches!(check.spec.kind, CheckKind::Ttl(_)) {
            return Err(CheckError::NotTtl);
        }
        let from = check.report(status, output, now);
        Ok(self.status_changed(&service_id, &name, check_id, from, status))
    }

    fn status_changed(
        &mut self,
        service_id: &str,
        name: &str,
        check_id: &str,
        from: Option<Status>,
        to: Status,
    ) -> Vec<Change> {
        let Some(from) = from else {
            return Vec::new();
        };
        let index = self.bump(name);
        if let Some(check) = self
            .instances
            .get_mut(service_id)
            .and_then(|i| i.checks.iter_mut().find(|c| c.spec.id == check_id))
        {
            check.modify_index = index;
        }
        vec![Change::StatusChanged {
            check_id: check_id.to_owned(),
            service_id: service_id.to_owned(),
            from,
            to,
        }]
    }

    fn bump(&mut self, name: &str) -> u64 {
        self.index += 1;
        self.name_index.insert(name.to_owned(), self.index);
        self.index
    }

    fn owner_of(&self, check_id: &str) -> Option<&Instance> {
        self.instances
            .values()
            .find(|i| i.checks.iter().any(|c| c.spec.id == check_id))
    }
}

#[cfg(test)]
mod tests;
