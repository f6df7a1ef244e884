//! The catalog's part in checkout: the `reserve` branch (stock, taken all or nothing, given back by
//! its compensation) and the price quote the orders service asks for before it starts a checkout.
//! The protocol around them is `coordinator::participant`'s; see docs/TRANSACTIONS.md.

pub mod quote;
pub mod reserve;

pub use reserve::ReserveStock;

#[cfg(test)]
mod tests {
    /// The barrier table is the participant module's; this service's migration must be its copy.
    #[test]
    fn the_barrier_migration_is_the_participant_modules_ddl() {
        assert_eq!(
            include_str!("../../migrations/0002_participant_barrier.sql"),
            coordinator::participant::BARRIER_DDL
        );
    }
}
