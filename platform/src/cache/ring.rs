//! The consistent-hash ring: which Redis node owns a key.
//!
//! Every books process must map a key to the same node, across processes, builds and Rust versions.
//! So nothing here hashes through `std`'s `Hash` impls for `str`/`[u8]` (they add length prefixes and
//! terminators that are an implementation detail) or through a randomly seeded hasher: both the
//! virtual nodes and the keys feed *explicit bytes* to `hashring`'s default builder, SipHash-2-4 with
//! fixed zero keys (the `siphasher` crate). A test pins known owners, so a change of algorithm fails
//! the build's tests instead of silently re-mapping every key.

use std::hash::{Hash, Hasher};

use hashring::HashRing;

/// Virtual nodes per Redis node unless configured: enough that three nodes each own close to a
/// third of the key space (the rebalancing test asserts the bounds).
pub const DEFAULT_VIRTUAL_NODES: u32 = 160;

/// One point of a node on the ring: `<node name>#<replica>` as bytes.
#[derive(Debug, Clone, PartialEq)]
struct VirtualNode {
    node: usize,
    point: Vec<u8>,
}

impl Hash for VirtualNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.point);
    }
}

/// A key as the ring hashes it: its bytes and nothing else.
struct KeyBytes<'a>(&'a [u8]);

impl Hash for KeyBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// A ring over some of the configured nodes, identified by their index in the configuration (the
/// names are the nodes' addresses, so every process configured alike builds the same ring).
pub struct Ring {
    ring: HashRing<VirtualNode>,
    members: Vec<usize>,
}

impl Ring {
    /// A ring of `members` (indexes into `names`), each with `virtual_nodes` points.
    pub fn new(names: &[String], members: &[usize], virtual_nodes: u32) -> Ring {
        let mut ring = HashRing::new();
        for &node in members {
            let Some(name) = names.get(node) else {
                continue;
            };
            for replica in 0..virtual_nodes.max(1) {
                ring.add(VirtualNode {
                    node,
                    point: format!("{name}#{replica}").into_bytes(),
                });
            }
        }
        Ring {
            ring,
            members: members.to_vec(),
        }
    }

    /// The index of the node owning `key`, or `None` when the ring is empty.
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        self.ring.get(&KeyBytes(key)).map(|v| v.node)
    }

    /// The nodes on the ring.
    pub fn members(&self) -> &[usize] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 7000 + i)).collect()
    }

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("book:{i}").into_bytes()).collect()
    }

    fn owners(ring: &Ring, keys: &[Vec<u8>]) -> Vec<usize> {
        keys.iter()
            .map(|k| ring.owner(k).expect("non-empty ring"))
            .collect()
    }

    #[test]
    fn owners_are_pinned_so_every_build_agrees() {
        // If this fails, the hash changed: every process of a rolling upgrade would disagree on
        // owners. Change it only on purpose (and flush the ring when deploying).
        let ring = Ring::new(&names(3), &[0, 1, 2], DEFAULT_VIRTUAL_NODES);
        let got: Vec<usize> = ["book:a", "book:b", "books:list:gen", "x"]
            .iter()
            .map(|k| ring.owner(k.as_bytes()).expect("owner"))
            .collect();
        assert_eq!(got, PINNED_OWNERS);
    }
    const PINNED_OWNERS: [usize; 4] = [1, 2, 0, 0];

    #[test]
    fn three_nodes_share_the_keys_evenly() {
        let ring = Ring::new(&names(3), &[0, 1, 2], DEFAULT_VIRTUAL_NODES);
        let keys = keys(30_000);
        let owners = owners(&ring, &keys);
        for node in 0..3 {
            let share = owners.iter().filter(|o| **o == node).count() as f64 / keys.len() as f64;
            assert!((0.25..0.42).contains(&share), "node {node} owns {share}");
        }
    }

    #[test]
    fn adding_a_node_moves_about_one_nth_of_the_keys_and_only_to_it() {
        let keys = keys(30_000);
        let before = owners(
            &Ring::new(&names(4), &[0, 1, 2], DEFAULT_VIRTUAL_NODES),
            &keys,
        );
        let after = owners(
            &Ring::new(&names(4), &[0, 1, 2, 3], DEFAULT_VIRTUAL_NODES),
            &keys,
        );
        let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
        let share = moved.len() as f64 / keys.len() as f64;
        // Ideal 1/4; virtual nodes keep it within a few points of that.
        assert!((0.18..0.32).contains(&share), "moved {share}");
        assert!(
            moved.iter().all(|&i| after[i] == 3),
            "a key moved between old nodes"
        );
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let keys = keys(30_000);
        let before = owners(
            &Ring::new(&names(3), &[0, 1, 2], DEFAULT_VIRTUAL_NODES),
            &keys,
        );
        let after = owners(&Ring::new(&names(3), &[0, 2], DEFAULT_VIRTUAL_NODES), &keys);
        for i in 0..keys.len() {
            if before[i] == 1 {
                assert_ne!(after[i], 1);
            } else {
                assert_eq!(
                    before[i], after[i],
                    "key {i} moved without its node leaving"
                );
            }
        }
        let share = before.iter().filter(|o| **o == 1).count() as f64 / keys.len() as f64;
        assert!((0.25..0.42).contains(&share), "node 1 owned {share}");
    }

    #[test]
    fn an_empty_ring_owns_nothing() {
        assert_eq!(Ring::new(&names(3), &[], 10).owner(b"k"), None);
    }
}
