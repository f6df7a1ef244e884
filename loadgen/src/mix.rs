//! The operations a simulated customer performs and the weighted mix they are drawn from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One kind of request the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// A page of the catalog.
    Browse,
    /// A catalog search (`q`).
    Search,
    /// One book by id.
    View,
    /// A rating (write-behind, 202).
    Rate,
    /// A credit top-up with an `Idempotency-Key`.
    TopUp,
    /// A two-phase-commit checkout.
    Checkout2pc,
    /// A saga checkout.
    CheckoutSaga,
}

impl Operation {
    pub const ALL: [Operation; 7] = [
        Operation::Browse,
        Operation::Search,
        Operation::View,
        Operation::Rate,
        Operation::TopUp,
        Operation::Checkout2pc,
        Operation::CheckoutSaga,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Browse => "browse",
            Operation::Search => "search",
            Operation::View => "view",
            Operation::Rate => "rate",
            Operation::TopUp => "top_up",
            Operation::Checkout2pc => "checkout_2pc",
            Operation::CheckoutSaga => "checkout_saga",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Operation {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Operation> {
        Operation::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Operation::ALL.iter().map(|op| op.name()).collect();
                anyhow::anyhow!("unknown operation {s:?}: one of {}", names.join(", "))
            })
    }
}

/// Relative weights of the operations; drawn with probability weight / total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    weights: Vec<(Operation, u32)>,
    total: u32,
}

impl Default for Mix {
    /// A shop's day: mostly reading, some ratings and top-ups, one request in ten a checkout.
    fn default() -> Self {
        Mix::new(&[
            (Operation::Browse, 30),
            (Operation::Search, 15),
            (Operation::View, 30),
            (Operation::Rate, 8),
            (Operation::TopUp, 7),
            (Operation::Checkout2pc, 5),
            (Operation::CheckoutSaga, 5),
        ])
        .unwrap_or_else(|_| unreachable!("the default mix has positive weights"))
    }
}

impl Mix {
    /// A mix from `(operation, weight)` pairs; zero weights drop the operation, and at least one
    /// weight must be positive.
    pub fn new(weights: &[(Operation, u32)]) -> anyhow::Result<Mix> {
        let weights: Vec<_> = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
        let total = weights
            .iter()
            .try_fold(0u32, |sum, (_, w)| sum.checked_add(*w))
            .ok_or_else(|| anyhow::anyhow!("the weights add up to more than {}", u32::MAX))?;
        anyhow::ensure!(total > 0, "the mix needs at least one positive weight");
        Ok(Mix { weights, total })
    }

    /// Parses `browse=30,view=30,checkout_2pc=5`: operations not named get weight zero.
    pub fn parse(text: &str) -> anyhow::Result<Mix> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{part:?} is not operation=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("the weight in {part:?} is not a whole number"))?;
            weights.push((name.trim().parse()?, weight));
        }
        Mix::new(&weights)
    }

    /// The operation for a uniform draw `roll` in `0..total()`.
    pub fn pick(&self, roll: u32) -> Operation {
        let mut left = roll % self.total;
        for (op, weight) in &self.weights {
            if left < *weight {
                return *op;
            }
            left -= weight;
        }
        self.weights[self.weights.len() - 1].0
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    /// Draws one operation.
    pub fn draw(&self, rng: &mut impl rand::Rng) -> Operation {
        self.pick(rng.random_range(0..self.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_roll_maps_to_the_operation_owning_that_share_of_the_weights() {
        let mix = Mix::parse("browse=2, rate=0, top_up=1").expect("valid mix");
        assert_eq!(mix.total(), 3);
        let picks: Vec<_> = (0..3).map(|r| mix.pick(r)).collect();
        assert_eq!(
            picks,
            [Operation::Browse, Operation::Browse, Operation::TopUp]
        );
    }

    #[test]
    fn draws_follow_the_weights() {
        let mix = Mix::default();
        let mut rng = rand::rng();
        let draws = 70_000;
        let browse = (0..draws)
            .filter(|_| mix.draw(&mut rng) == Operation::Browse)
            .count();
        let share = browse as f64 / draws as f64;
        assert!((share - 0.30).abs() < 0.02, "browse share {share}");
    }

    #[test]
    fn bad_mixes_are_refused_with_a_reason() {
        for (text, says) in [
            ("", "positive weight"),
            ("browse=0", "positive weight"),
            ("shop=3", "unknown operation"),
            ("browse", "operation=weight"),
            ("browse=x", "whole number"),
        ] {
            let err = Mix::parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.name().parse::<Operation>().expect("known"), op);
        }
    }
}
