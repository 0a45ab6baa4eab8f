//! JUnit XML for CI, from the outcome of each trial (libtest-mimic has no JUnit output).
use std::fmt::Write;
use std::time::Duration;

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It failed, with the message.
    Failed(String),
    /// It was not run, with the reason.
    Ignored(String),
}

/// One trial's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The trial (capability) name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry other control characters at all.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit document of one suite.
pub fn to_xml(suite: &str, records: &[Record]) -> String {
    let failures = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .count();
    let skipped = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ignored(_)))
        .count();
    let time: f64 = records.iter().map(|r| r.duration.as_secs_f64()).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">",
        escape(suite),
        records.len()
    );
    for r in records {
        let _ = write!(
            xml,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(suite),
            escape(&r.name),
            r.duration.as_secs_f64()
        );
        match &r.outcome {
            Outcome::Passed => xml.push_str("/>\n"),
            Outcome::Failed(message) => {
                let _ = writeln!(
                    xml,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(message.lines().next().unwrap_or_default()),
                    escape(message)
                );
            }
            Outcome::Ignored(reason) => {
                let _ = writeln!(
                    xml,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    escape(reason)
                );
            }
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_escapes() {
        let records = [
            Record {
                name: "health".into(),
                outcome: Outcome::Passed,
                duration: Duration::from_millis(5),
            },
            Record {
                name: "stream".into(),
                outcome: Outcome::Failed("chunk <2> & \"x\"\nmore".into()),
                duration: Duration::from_secs(1),
            },
            Record {
                name: "auth".into(),
                outcome: Outcome::Ignored("not in BACKEND_TEST_CAPS".into()),
                duration: Duration::ZERO,
            },
        ];
        let xml = to_xml("e2e-backends", &records);
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"chunk &lt;2&gt; &amp; &quot;x&quot;\">"),
            "{xml}"
        );
        assert!(
            xml.contains("<testcase classname=\"e2e-backends\" name=\"health\" time=\"0.005\"/>")
        );
        assert!(xml.contains("<skipped message=\"not in BACKEND_TEST_CAPS\"/>"));
    }
}
