//! What the API shows of a customer. It has no password field, so no handler can leak one by accident.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `Customer = {id, email, name, credit_cents, created_at}` as API.md defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub credit_cents: i64,
    pub created_at: DateTime<Utc>,
}
