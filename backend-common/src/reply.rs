//! Assembling replies from generated tokens: UTF-8 across token boundaries, stop sequences
//! across chunk boundaries, then (for chat requests) the tool/reasoning parser, whose
//! deltas become `ChatDelta`s.
use crate::engine::{GeneratedToken, GenerationStats};
use crate::parsers::{self, ChatParser, ParsedMessage};
use crate::pb::{self, Reply};
use crate::stop::StopMatcher;
use crate::text::Utf8Assembler;

/// Turns token pieces into the text a client may see.
#[derive(Debug)]
pub struct TextAssembler {
    utf8: Utf8Assembler,
    stop: StopMatcher,
}

/// What one token adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextStep {
    /// Visible text released by this token (may be empty while text is held back).
    pub text: String,
    /// A stop sequence was reached: generation must end.
    pub stopped: bool,
}

impl TextAssembler {
    /// An assembler with the request's stop sequences.
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Self {
        TextAssembler {
            utf8: Utf8Assembler::default(),
            stop: StopMatcher::new(stops),
        }
    }

    /// Feeds one token's bytes.
    pub fn push(&mut self, piece: &[u8]) -> TextStep {
        let text = self.utf8.push(piece);
        let scan = self.stop.push(&text);
        TextStep {
            text: scan.emit,
            stopped: scan.stopped,
        }
    }

    /// Releases what was held back at the end of generation.
    pub fn finish(&mut self) -> String {
        let tail = self.utf8.finish();
        let scan = self.stop.push(&tail);
        if scan.stopped {
            scan.emit
        } else {
            scan.emit + &self.stop.finish()
        }
    }
}

/// Builds the replies of one request, chunk by chunk.
pub struct ReplyBuilder {
    text: TextAssembler,
    parser: Option<ChatParser>,
    /// Logprob entries not yet sent in a chunk.
    logprobs: Vec<serde_json::Value>,
    /// Everything sent so far, kept only for a unary reply.
    history: Option<History>,
}

/// The whole output of a unary request, accumulated as chunks are built.
#[derive(Default)]
struct History {
    text: Vec<u8>,
    logprobs: Vec<serde_json::Value>,
}

/// One token's contribution to a stream.
pub struct Chunk {
    /// The reply to send, if the token released anything.
    pub reply: Option<Reply>,
    /// A stop sequence ended generation.
    pub stopped: bool,
}

fn wire_delta(delta: &parsers::ChatDelta) -> pb::ChatDelta {
    pb::ChatDelta {
        content: delta.content.clone(),
        reasoning_content: delta.reasoning_content.clone(),
        tool_calls: delta
            .tool_calls
            .iter()
            .map(|c| pb::ToolCallDelta {
                index: c.index as i32,
                id: c.id.clone().unwrap_or_default(),
                name: c.name.clone().unwrap_or_default(),
                arguments: c.arguments.clone(),
            })
            .collect(),
    }
}

fn wire_message(message: &ParsedMessage) -> pb::ChatDelta {
    pb::ChatDelta {
        content: message.content.clone().unwrap_or_default(),
        reasoning_content: message.reasoning_content.clone().unwrap_or_default(),
        tool_calls: message
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| pb::ToolCallDelta {
                index: i as i32,
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect(),
    }
}

/// The `logprobs` JSON entry of one token.
fn logprob_entry(token: &GeneratedToken) -> Option<serde_json::Value> {
    let lp = token.logprob.as_ref()?;
    let item = |id: i32, bytes: &[u8], logprob: f32| {
        serde_json::json!({
            "id": id,
            "token": String::from_utf8_lossy(bytes),
            "bytes": bytes,
            "logprob": logprob,
        })
    };
    let mut entry = item(token.id, &token.piece, lp.logprob);
    entry["top_logprobs"] = lp
        .top
        .iter()
        .map(|(id, bytes, logprob)| item(*id, bytes, *logprob))
        .collect();
    Some(entry)
}

impl ReplyBuilder {
    /// A builder for a streamed request with these stop sequences and (for chat requests)
    /// parser.
    pub fn new<S: AsRef<str>>(stops: &[S], parser: Option<ChatParser>) -> Self {
        ReplyBuilder {
            text: TextAssembler::new(stops),
            parser,
            logprobs: Vec::new(),
            history: None,
        }
    }

    /// A builder for a unary request: it also keeps the whole output for
    /// [`finish_unary`](Self::finish_unary).
    pub fn unary<S: AsRef<str>>(stops: &[S], parser: Option<ChatParser>) -> Self {
        ReplyBuilder {
            history: Some(History::default()),
            ..ReplyBuilder::new(stops, parser)
        }
    }

    /// Feeds one token; returns the stream chunk it releases.
    pub fn push(&mut self, token: &GeneratedToken) -> Chunk {
        self.logprobs.extend(logprob_entry(token));
        let (text, stopped, special) = if token.special {
            // Control tokens are markup: only a parser may see them, and whole.
            (
                String::new(),
                false,
                String::from_utf8_lossy(&token.piece).into_owned(),
            )
        } else {
            let step = self.text.push(&token.piece);
            (step.text, step.stopped, String::new())
        };
        let reply = match &mut self.parser {
            Some(parser) => {
                let delta = if special.is_empty() {
                    wire_delta(parser.push(&text))
                } else {
                    wire_delta(parser.push_special(&special))
                };
                self.chunk(delta)
            }
            None => self.plain_chunk(text),
        };
        Chunk { reply, stopped }
    }

    fn chunk(&mut self, delta: pb::ChatDelta) -> Option<Reply> {
        let empty = delta.content.is_empty()
            && delta.reasoning_content.is_empty()
            && delta.tool_calls.is_empty();
        if empty && self.logprobs.is_empty() {
            return None;
        }
        Some(Reply {
            message: delta.content.clone().into_bytes(),
            logprobs: self.take_logprobs(),
            chat_deltas: if empty { Vec::new() } else { vec![delta] },
            ..Default::default()
        })
    }

    fn plain_chunk(&mut self, text: String) -> Option<Reply> {
        // A token that releases no text (held back by a stop prefix or a split character)
        // still owes its logprobs; they travel with the next chunk that has something.
        if text.is_empty() && self.logprobs.is_empty() {
            return None;
        }
        if let Some(history) = &mut self.history {
            history.text.extend_from_slice(text.as_bytes());
        }
        Some(Reply {
            message: text.into_bytes(),
            logprobs: self.take_logprobs(),
            ..Default::default()
        })
    }

    fn take_logprobs(&mut self) -> Vec<u8> {
        if self.logprobs.is_empty() {
            return Vec::new();
        }
        let entries = std::mem::take(&mut self.logprobs);
        let json = serde_json::json!({ "content": entries })
            .to_string()
            .into_bytes();
        if let Some(history) = &mut self.history {
            history.logprobs.extend(entries);
        }
        json
    }

    /// The last chunk of a stream: what was held back, plus counts and timings.
    pub fn finish_stream(&mut self, stats: &GenerationStats) -> Reply {
        let tail = self.text.finish();
        let mut reply = match &mut self.parser {
            Some(parser) => {
                let mut delta = wire_delta(parser.push(&tail));
                let last = wire_delta(parser.finish());
                merge_into(&mut delta, last);
                self.chunk(delta).unwrap_or_default()
            }
            None => self.plain_chunk(tail).unwrap_or_default(),
        };
        fill_stats(&mut reply, stats);
        reply
    }

    /// The unary reply: the whole text (or parsed message) with counts and timings.
    pub fn finish_unary(&mut self, stats: &GenerationStats) -> Reply {
        let mut reply = self.finish_stream(stats);
        let history = self.history.take().unwrap_or_default();
        reply.logprobs = logprobs_json(history.logprobs);
        match &self.parser {
            Some(parser) => {
                let message = parser.message();
                reply.message = message.content.clone().unwrap_or_default().into_bytes();
                reply.chat_deltas = vec![wire_message(&message)];
            }
            None => reply.message = history.text,
        }
        reply
    }
}

fn logprobs_json(entries: Vec<serde_json::Value>) -> Vec<u8> {
    if entries.is_empty() {
        return Vec::new();
    }
    serde_json::json!({ "content": entries })
        .to_string()
        .into_bytes()
}

/// Appends `next` to `delta` (same call indices merge, as LocalAI merges them).
fn merge_into(delta: &mut pb::ChatDelta, next: pb::ChatDelta) {
    delta.content.push_str(&next.content);
    delta.reasoning_content.push_str(&next.reasoning_content);
    for call in next.tool_calls {
        match delta.tool_calls.iter_mut().find(|c| c.index == call.index) {
            Some(existing) => {
                if existing.id.is_empty() {
                    existing.id = call.id;
                }
                if existing.name.is_empty() {
                    existing.name = call.name;
                }
                existing.arguments.push_str(&call.arguments);
            }
            None => delta.tool_calls.push(call),
        }
    }
}

fn fill_stats(reply: &mut Reply, stats: &GenerationStats) {
    reply.tokens = stats.completion_tokens as i32;
    reply.prompt_tokens = stats.prompt_tokens as i32;
    reply.timing_prompt_processing = stats.prompt_ms;
    reply.timing_token_generation = stats.generation_ms;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FinishReason, TokenLogprob};
    use crate::parsers::{ParseOptions, ToolParserKind, ToolSpec};

    fn token(text: &str) -> GeneratedToken {
        GeneratedToken {
            id: 1,
            piece: text.as_bytes().to_vec(),
            special: false,
            logprob: None,
        }
    }

    fn stats() -> GenerationStats {
        GenerationStats {
            prompt_tokens: 3,
            completion_tokens: 4,
            prompt_ms: 1.0,
            generation_ms: 2.0,
            finish: FinishReason::Eos,
        }
    }

    #[test]
    fn stop_split_inside_a_multibyte_character() {
        let mut a = TextAssembler::new(&["é!"]);
        let mut out = String::new();
        for b in "caf é! no".as_bytes() {
            let step = a.push(&[*b]);
            out += &step.text;
            if step.stopped {
                break;
            }
        }
        assert_eq!(out, "caf ");
    }

    #[test]
    fn finish_releases_held_text() {
        let mut a = TextAssembler::new(&["END"]);
        assert_eq!(a.push(b"ok EN").text, "ok ");
        assert_eq!(a.finish(), "EN");
    }

    #[test]
    fn every_token_keeps_its_logprob_in_stream_and_unary_replies() {
        let with_logprob = |text: &str, id: i32| GeneratedToken {
            id,
            logprob: Some(TokenLogprob {
                logprob: -0.5,
                top: vec![(id, text.as_bytes().to_vec(), -0.5)],
            }),
            ..token(text)
        };
        // "E" is held back as a possible start of the stop string "END".
        let tokens = [
            with_logprob("Hi", 1),
            with_logprob(" E", 2),
            with_logprob("x", 3),
        ];
        let ids = |json: &[u8]| -> Vec<i64> {
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            v["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap())
                .collect()
        };
        let mut stream = ReplyBuilder::new(&["END"], None);
        let mut streamed = Vec::new();
        for t in &tokens {
            if let Some(r) = stream.push(t).reply {
                streamed.extend(ids(&r.logprobs));
            }
        }
        let last = stream.finish_stream(&stats());
        if !last.logprobs.is_empty() {
            streamed.extend(ids(&last.logprobs));
        }
        assert_eq!(streamed, vec![1, 2, 3]);
        let mut unary = ReplyBuilder::unary(&["END"], None);
        for t in &tokens {
            unary.push(t);
        }
        let whole = unary.finish_unary(&stats());
        assert_eq!(ids(&whole.logprobs), vec![1, 2, 3]);
        assert_eq!(whole.message, b"Hi Ex");
    }

    #[test]
    fn plain_stream_has_no_repeated_tail() {
        let mut b = ReplyBuilder::new::<&str>(&[], None);
        let mut texts = Vec::new();
        for t in ["Hel", "lo"] {
            texts.extend(b.push(&token(t)).reply.map(|r| r.message));
        }
        let last = b.finish_stream(&stats());
        assert_eq!(texts, vec![b"Hel".to_vec(), b"lo".to_vec()]);
        assert!(last.message.is_empty());
        assert_eq!((last.tokens, last.prompt_tokens), (4, 3));
    }

    #[test]
    fn special_tokens_never_reach_plain_text() {
        let mut b = ReplyBuilder::new::<&str>(&[], None);
        let special = GeneratedToken {
            special: true,
            ..token("<|im_end|>")
        };
        assert!(b.push(&special).reply.is_none());
    }

    #[test]
    fn tool_call_stream_carries_no_markup_and_merges_to_the_unary_result() {
        let tools = ToolSpec::list_from_openai_json(
            r#"[{"type":"function","function":{"name":"get_weather","parameters":{}}}]"#,
        )
        .unwrap();
        let parser = || {
            Some(ChatParser::new(
                Some(ToolParserKind::Hermes),
                None,
                ParseOptions {
                    tools: tools.clone(),
                    ..Default::default()
                },
            ))
        };
        let pieces = [
            "<tool_call>",
            "\n{\"name\": \"get_",
            "weather\", \"arguments\": {\"city\": ",
            "\"Paris\"}}\n",
            "</tool_call>",
        ];
        let mut stream = ReplyBuilder::new::<&str>(&[], parser());
        let mut replies: Vec<Reply> = pieces
            .iter()
            .filter_map(|p| stream.push(&token(p)).reply)
            .collect();
        replies.push(stream.finish_stream(&stats()));
        let mut merged = pb::ChatDelta::default();
        for r in &replies {
            assert!(!String::from_utf8_lossy(&r.message).contains("tool_call"));
            for d in &r.chat_deltas {
                merge_into(&mut merged, d.clone());
            }
        }
        let names: Vec<_> = replies
            .iter()
            .flat_map(|r| &r.chat_deltas)
            .flat_map(|d| &d.tool_calls)
            .filter(|c| !c.name.is_empty())
            .collect();
        assert_eq!(names.len(), 1, "the name is sent once");
        let mut unary = ReplyBuilder::unary::<&str>(&[], parser());
        for p in pieces {
            unary.push(&token(p));
        }
        let whole = unary.finish_unary(&stats());
        let call = &whole.chat_deltas[0].tool_calls[0];
        assert_eq!(call.name, "get_weather");
        assert_eq!(merged.tool_calls[0].name, call.name);
        let a: serde_json::Value = serde_json::from_str(&merged.tool_calls[0].arguments).unwrap();
        let b: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["city"], "Paris");
    }
}
