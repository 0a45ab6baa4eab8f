//! Our capability `metadata`: ModelMetadata, which current LocalAI's core calls after
//! loading a model on a backend named like llama.cpp's, to learn whether the template
//! thinks, how it renders, and the tool-call markup its own fallback parser should read.
use super::{CheckError, Rpc, Verdict, ensure};
use crate::context::Context;
use crate::testing::chat;

/// The `format_type` values LocalAI's core understands.
const FORMAT_TYPES: [&str; 3] = ["json_native", "tag_with_json", "tag_with_tagged"];

/// ModelMetadata answers for the loaded model: a model that serves chat requests renders
/// the user message "test" through its template; a tool format, when given, is one LocalAI
/// reads, with the fields that shape needs; `supports_thinking` is a template that renders
/// a `<think>`-style opener or reacts to `enable_thinking`, which the check cannot see, so
/// it is only reported.
pub async fn metadata(ctx: &Context) -> Result<Verdict, CheckError> {
    let mut client = ctx.loaded_client().await?;
    let options = ctx.model_options(&ctx.config.options, false).await?;
    let metadata = client.model_metadata(options).await.rpc("ModelMetadata")?;
    ctx.note(format!(
        "supports_thinking {}, rendered {:?}, tool format {:?}",
        metadata.supports_thinking,
        metadata.rendered_template,
        metadata.tool_format.as_ref().map(|f| &f.format_type)
    ));
    let chats = client.predict(chat("Say hi.", 2)).await.is_ok();
    if chats {
        ensure!(
            metadata.rendered_template.contains("test"),
            "the model serves chat requests, but ModelMetadata's rendered_template {:?} does not hold the user message \"test\"",
            metadata.rendered_template
        );
    }
    if let Some(format) = &metadata.tool_format {
        let kind = format.format_type.as_str();
        ensure!(
            FORMAT_TYPES.contains(&kind),
            "tool_format.format_type {kind:?} is none of {FORMAT_TYPES:?}"
        );
        let complete = match kind {
            "json_native" => !format.name_field.is_empty() && !format.args_field.is_empty(),
            "tag_with_tagged" => {
                !format.arg_name_prefix.is_empty() && !format.arg_value_suffix.is_empty()
            }
            _ => !format.func_name_prefix.is_empty() || !format.section_start.is_empty(),
        };
        ensure!(
            complete,
            "tool_format of type {kind:?} lacks the markers that shape needs: {format:?}"
        );
    }
    Ok(Verdict::Passed)
}
