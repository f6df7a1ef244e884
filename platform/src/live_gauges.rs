//! Gauges read when `/metrics` is scraped, for series that belong to something that can go away
//! (an upstream instance the registry dropped). The recorder cannot forget a series, so a gauge
//! recorded there would keep its last value forever; one computed at scrape time simply stops
//! appearing with its subject.

use std::fmt::Write;
use std::sync::{Mutex, OnceLock, PoisonError};

/// One gauge family: its name, help text and samples (labels, value).
pub struct GaugeFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

type Collector = Box<dyn Fn() -> Vec<GaugeFamily> + Send + Sync>;

static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());
static COMPONENT: OnceLock<String> = OnceLock::new();

/// The `service` label every family gets, like the recorder's global label.
pub(crate) fn set_component(component: &str) {
    let _ = COMPONENT.set(component.to_owned());
}

/// Adds a collector, called at every scrape for the process's lifetime.
pub fn register(collector: impl Fn() -> Vec<GaugeFamily> + Send + Sync + 'static) {
    COLLECTORS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Box::new(collector));
}

/// The exposition of every registered collector's gauges (empty without any).
pub(crate) fn render() -> String {
    let collectors = COLLECTORS.lock().unwrap_or_else(PoisonError::into_inner);
    let component = COMPONENT.get().map(String::as_str);
    let mut text = String::new();
    for family in collectors.iter().flat_map(|collect| collect()) {
        write_family(&mut text, &family, component);
    }
    text
}

fn write_family(text: &mut String, family: &GaugeFamily, component: Option<&str>) {
    let _ = writeln!(text, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(text, "# TYPE {} gauge", family.name);
    for (labels, value) in &family.samples {
        let labels = component
            .map(|c| ("service", c))
            .into_iter()
            .chain(labels.iter().map(|(k, v)| (*k, v.as_str())))
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        let _ = writeln!(text, "{}{{{labels}}} {value}", family.name);
    }
}

/// Label values escape backslash, double quote and newline (the text format's rules).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_renders_with_the_component_label_and_escaped_values() {
        let family = GaugeFamily {
            name: "thing_state",
            help: "The state of each thing.",
            samples: vec![
                (vec![("thing", "a".into())], 1.0),
                (vec![("thing", "b\"\\\n".into())], 0.0),
            ],
        };
        let mut text = String::new();
        write_family(&mut text, &family, Some("gateway"));
        assert_eq!(
            text,
            "# HELP thing_state The state of each thing.\n# TYPE thing_state gauge\n\
             thing_state{service=\"gateway\",thing=\"a\"} 1\n\
             thing_state{service=\"gateway\",thing=\"b\\\"\\\\\\n\"} 0\n"
        );
    }
}
