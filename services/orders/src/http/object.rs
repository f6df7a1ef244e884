//! Request bodies must be JSON objects.
//!
//! serde's derived `Deserialize` for a struct also accepts a positional array (`["a@b.co", "Ada",
//! "secret"]`), which no client of this API should rely on: wrapping the body type in [`Object`]
//! makes anything but an object a 422 like every other wrongly typed body.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `T`, deserialized only from a JSON object.
#[derive(Debug, Clone)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Pair {
        a: u8,
        b: String,
    }

    #[test]
    fn objects_are_accepted_and_field_rules_still_apply() {
        let parsed: Result<Object<Pair>, _> = serde_json::from_str(r#"{"b": "x", "a": 1}"#);
        assert_eq!(
            parsed.map(|o| o.0).ok(),
            Some(Pair {
                a: 1,
                b: "x".into()
            })
        );
        for bad in [
            r#"{"a": 1}"#,
            r#"{"a": 1, "b": "x", "c": 2}"#,
            r#"{"a": "1", "b": "x"}"#,
        ] {
            assert!(serde_json::from_str::<Object<Pair>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arrays_and_scalars_are_rejected_as_data_errors() {
        for bad in [r#"[1, "x"]"#, "null", "1", r#""text""#] {
            let err = serde_json::from_str::<Object<Pair>>(bad).err();
            assert!(err.is_some_and(|e| e.is_data()), "{bad}");
        }
    }
}
