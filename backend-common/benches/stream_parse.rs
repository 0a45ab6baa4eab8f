//! Cost of streaming a 16 KB tool-call output a few characters at a time, against one parse of the
//! whole text, for several parser formats. Prints one line per format; the target is at most 2x.
//!
//! Run with `cargo bench --bench stream_parse`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use backend_common::parsers::{ChatParser, ParseOptions, ReasoningParserKind, ToolParserKind};

/// Size of the generated output.
const TARGET_BYTES: usize = 16 * 1024;
/// Characters per streamed piece, like a token.
const PIECE_CHARS: usize = 4;

/// Text of about `TARGET_BYTES` with quotes, escapes and non-ASCII, as file contents would have.
fn payload(room: usize) -> String {
    let line = "let s = \"héllo {world}\"; // a [line] of code\\n\n";
    line.repeat(room / line.len() + 1)[..room].to_owned()
}

/// A JSON string literal of the payload.
fn json_payload(room: usize) -> String {
    serde_json::Value::String(payload(room)).to_string()
}

fn outputs() -> Vec<(
    &'static str,
    Option<ToolParserKind>,
    Option<ReasoningParserKind>,
    String,
)> {
    let room = TARGET_BYTES - 200;
    let hermes = format!(
        "Writing the file.\n<tool_call>\n{{\"name\": \"write_file\", \"arguments\": {{\"path\": \"src/main.rs\", \"content\": {}}}}}\n</tool_call>",
        json_payload(room)
    );
    let reasoning_hermes = format!(
        "<think>{}</think>{}",
        payload(room / 2),
        &hermes[..hermes.len() / 2]
    );
    let qwen = format!(
        "<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/main.rs\n</parameter>\n<parameter=content>\n{}\n</parameter>\n</function>\n</tool_call>",
        payload(room)
    );
    let deepseek = format!(
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>write_file\n```json\n{{\"content\": {}}}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        json_payload(room)
    );
    let kimi = format!(
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.write_file:0 <|tool_call_argument_begin|>{{\"content\": {}}}<|tool_call_end|><|tool_calls_section_end|>",
        json_payload(room)
    );
    let glm = format!(
        "<tool_call>write_file\n<arg_key>content</arg_key>\n<arg_value>{}</arg_value>\n</tool_call>",
        payload(room)
    );
    let harmony = format!(
        "<|channel|>analysis<|message|>Need to write.<|end|><|start|>assistant<|channel|>commentary to=functions.write_file <|constrain|>json<|message|>{{\"content\": {}}}",
        json_payload(room)
    );
    let llama3 = format!(
        "{{\"name\": \"write_file\", \"parameters\": {{\"content\": {}}}}}",
        json_payload(room)
    );
    let mistral = format!(
        "[TOOL_CALLS]write_file{{\"content\": {}}}",
        json_payload(room)
    );
    let pythonic = format!(
        "[write_file(content={})]",
        json_payload(room).replace('\n', "")
    );
    let prose = payload(TARGET_BYTES);
    vec![
        ("hermes", Some(ToolParserKind::Hermes), None, hermes),
        (
            "hermes+qwen3 reasoning",
            Some(ToolParserKind::Hermes),
            Some(ReasoningParserKind::Qwen3),
            reasoning_hermes,
        ),
        ("qwen3_xml", Some(ToolParserKind::Qwen3Xml), None, qwen),
        (
            "deepseek_v3",
            Some(ToolParserKind::DeepSeekV3),
            None,
            deepseek,
        ),
        ("kimi_k2", Some(ToolParserKind::KimiK2), None, kimi),
        ("glm45", Some(ToolParserKind::Glm45), None, glm),
        (
            "openai (harmony)",
            Some(ToolParserKind::Openai),
            None,
            harmony,
        ),
        (
            "llama3_json",
            Some(ToolParserKind::Llama3Json),
            None,
            llama3,
        ),
        ("mistral", Some(ToolParserKind::Mistral), None, mistral),
        ("pythonic", Some(ToolParserKind::Pythonic), None, pythonic),
        (
            "hermes, plain prose",
            Some(ToolParserKind::Hermes),
            None,
            prose,
        ),
    ]
}

/// The text cut into pieces of `PIECE_CHARS` characters.
fn pieces(text: &str) -> Vec<&str> {
    let mut cuts: Vec<usize> = text
        .char_indices()
        .map(|(at, _)| at)
        .step_by(PIECE_CHARS)
        .collect();
    cuts.push(text.len());
    cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// Best time of `runs` runs of `work` (the minimum filters scheduler noise on a shared machine).
fn best_of(runs: usize, mut work: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    println!(
        "streaming {TARGET_BYTES} B outputs {PIECE_CHARS} chars at a time vs one whole parse (best of 30)"
    );
    let mut worst: f64 = 0.0;
    for (label, tool, reasoning, text) in outputs() {
        let chunks = pieces(&text);
        let whole = best_of(30, || {
            black_box(ChatParser::parse(
                tool,
                reasoning,
                ParseOptions::default(),
                black_box(&text),
            ));
        });
        let streamed = best_of(30, || {
            let mut parser = ChatParser::new(tool, reasoning, ParseOptions::default());
            for chunk in &chunks {
                black_box(parser.push(black_box(chunk)));
            }
            black_box(parser.finish());
        });
        let ratio = streamed.as_secs_f64() / whole.as_secs_f64().max(1e-9);
        worst = worst.max(ratio);
        println!(
            "{label:>24}: {} B, {} pieces: whole {:>8.1} us, streamed {:>8.1} us, ratio {ratio:.2}x",
            text.len(),
            chunks.len(),
            whole.as_secs_f64() * 1e6,
            streamed.as_secs_f64() * 1e6,
        );
    }
    println!("worst streamed/whole ratio: {worst:.2}x (target <= 2x)");
}
