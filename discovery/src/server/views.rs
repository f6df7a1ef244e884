//! How catalog instances look on the wire, in Consul's shapes.

use std::collections::HashMap;

use crate::server::registry::NodeInfo;
use crate::server::state::Instance;
use crate::wire::{AgentService, CatalogEntry, HealthCheck, HealthEntry, Node};

pub fn agent_service(instance: &Instance) -> AgentService {
    AgentService {
        id: instance.id.clone(),
        service: instance.name.clone(),
        tags: instance.tags.clone(),
        address: instance.address.clone(),
        port: instance.port,
        meta: instance.meta.clone(),
        enable_tag_override: false,
        create_index: instance.create_index,
        modify_index: instance.modify_index,
    }
}

pub fn node(info: &NodeInfo) -> Node {
    Node {
        id: info.id.clone(),
        node: info.name.clone(),
        address: info.address.clone(),
        datacenter: info.datacenter.clone(),
        tagged_addresses: tagged_addresses(info),
        meta: HashMap::new(),
    }
}

pub fn health_entry(info: &NodeInfo, instance: &Instance) -> HealthEntry {
    let checks = instance
        .checks
        .iter()
        .map(|check| HealthCheck {
            node: info.name.clone(),
            check_id: check.spec.id.clone(),
            name: check.spec.name.clone(),
            status: check.status.as_str().to_owned(),
            notes: check.spec.notes.clone(),
            output: check.output.clone(),
            service_id: instance.id.clone(),
            service_name: instance.name.clone(),
            service_tags: instance.tags.clone(),
            kind: check.spec.kind.name().to_owned(),
            create_index: instance.modify_index,
            modify_index: check.modify_index,
        })
        .collect();
    HealthEntry {
        node: node(info),
        service: agent_service(instance),
        checks,
    }
}

pub fn catalog_entry(info: &NodeInfo, instance: &Instance) -> CatalogEntry {
    CatalogEntry {
        id: info.id.clone(),
        node: info.name.clone(),
        address: info.address.clone(),
        datacenter: info.datacenter.clone(),
        tagged_addresses: tagged_addresses(info),
        node_meta: HashMap::new(),
        service_id: instance.id.clone(),
        service_name: instance.name.clone(),
        service_address: instance.address.clone(),
        service_port: instance.port,
        service_tags: instance.tags.clone(),
        service_meta: instance.meta.clone(),
        service_enable_tag_override: false,
        create_index: instance.create_index,
        modify_index: instance.modify_index,
    }
}

fn tagged_addresses(info: &NodeInfo) -> HashMap<String, String> {
    ["lan", "wan"]
        .into_iter()
        .map(|tag| (tag.to_owned(), info.address.clone()))
        .collect()
}
