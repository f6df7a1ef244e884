//! Parsed domain types: private fields and `parse` constructors, so invalid data cannot exist past the
//! HTTP boundary. Each type's tests (unit and property) sit beside it.

pub mod amount;
pub mod customer;
pub mod email;
pub mod name;
pub mod new_customer;
pub mod order;
pub mod password;

pub use amount::CreditAmount;
pub use customer::Customer;
pub use email::Email;
pub use name::CustomerName;
pub use new_customer::NewCustomer;
pub use order::{Order, OrderLine, OrderMode, OrderStatus};
pub use password::{Password, hash_password, verify_dummy, verify_password};
