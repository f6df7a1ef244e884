//! The catalog's upkeep, driven by the registry's check loop: TTL expiry, the critical reaper, and
//! handing out and recording HTTP probes.

use tokio::time::Instant;

use super::{Catalog, Change};
use crate::server::checks::{HttpProbe, Status};

/// An HTTP probe to run, tagged with the registration it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeJob {
    pub service_id: String,
    pub check_id: String,
    pub registration: u64,
    pub probe: HttpProbe,
}

impl Catalog {
    /// An HTTP probe's result; ignored when the instance was re-registered or removed meanwhile.
    pub fn record_probe(
        &mut self,
        job: &ProbeJob,
        status: Status,
        output: String,
        now: Instant,
    ) -> Vec<Change> {
        let Some(instance) = self
            .instances
            .get_mut(&job.service_id)
            .filter(|i| i.modify_index == job.registration)
        else {
            return Vec::new();
        };
        let name = instance.name.clone();
        let Some(check) = instance
            .checks
            .iter_mut()
            .find(|c| c.spec.id == job.check_id)
        else {
            return Vec::new();
        };
        let from = check.set_status(status, output, now);
        self.status_changed(&job.service_id, &name, &job.check_id, from, status)
    }

    /// Expires TTLs and reaps instances critical for longer than their `DeregisterCriticalServiceAfter`.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let mut expired = Vec::new();
        let mut reaped = Vec::new();
        for instance in self.instances.values_mut() {
            for check in &mut instance.checks {
                if let Some(from) = check.expire(now) {
                    expired.push((
                        instance.id.clone(),
                        instance.name.clone(),
                        check.spec.id.clone(),
                        from,
                    ));
                }
            }
            if let Some(check) = instance.checks.iter().find(|c| c.reap_due(now)) {
                reaped.push((
                    instance.id.clone(),
                    instance.name.clone(),
                    check.spec.id.clone(),
                ));
            }
        }
        let mut changes = Vec::new();
        for (service_id, name, check_id, from) in expired {
            changes.extend(self.status_changed(
                &service_id,
                &name,
                &check_id,
                Some(from),
                Status::Critical,
            ));
        }
        for (id, name, check_id) in reaped {
            self.instances.remove(&id);
            self.bump(&name);
            changes.push(Change::Reaped { id, name, check_id });
        }
        changes
    }

    /// HTTP probes that are due now; each is scheduled an interval out as it is handed over.
    pub fn due_probes(&mut self, now: Instant) -> Vec<ProbeJob> {
        let mut jobs = Vec::new();
        for instance in self.instances.values_mut() {
            for check in &mut instance.checks {
                if let Some(probe) = check.take_due_probe(now) {
                    jobs.push(ProbeJob {
                        service_id: instance.id.clone(),
                        check_id: check.spec.id.clone(),
                        registration: instance.modify_index,
                        probe,
                    });
                }
            }
        }
        jobs
    }
}
