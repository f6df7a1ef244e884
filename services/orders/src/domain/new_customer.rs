//! A sign-up that passed every rule: what `POST /api/customers` may store.

use platform::FieldError;

use super::email::Email;
use super::name::CustomerName;
use super::password::Password;

#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub email: Email,
    pub name: CustomerName,
    pub password: Password,
}

impl NewCustomer {
    /// Checks every field and reports every failure at once, so a form can show them all together.
    pub fn parse(
        email: &str,
        name: &str,
        password: String,
    ) -> Result<NewCustomer, Vec<FieldError>> {
        let email = Email::parse(email).map_err(|m| FieldError::new("email", m));
        let name = CustomerName::parse(name).map_err(|m| FieldError::new("name", m));
        let password = Password::parse(password).map_err(|m| FieldError::new("password", m));
        match (email, name, password) {
            (Ok(email), Ok(name), Ok(password)) => Ok(NewCustomer {
                email,
                name,
                password,
            }),
            (email, name, password) => Err([email.err(), name.err(), password.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_sign_up_parses() {
        let parsed = NewCustomer::parse(" Ada@Example.com", "Ada", "long enough".into());
        assert_eq!(
            parsed.map(|c| c.email.to_string()),
            Ok("ada@example.com".into())
        );
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let errors = NewCustomer::parse("nope", " ", "short".into())
            .err()
            .unwrap_or_default();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "name", "password"]);
    }
}
