//! `auspex.v1.Event` as the server sends it: the type and the JSON
//! document shared (an `Arc`) by every subscriber that gets it, encoded
//! straight from there. prost's generated type owns a `String`, which cost
//! one copy of each event's JSON per subscriber (build.rs maps the proto
//! message here with extern_path; clients keep the generated type).

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    encode_key, encode_varint, encoded_len_varint, key_len, skip_field, DecodeContext, WireType,
};

/// Field numbers, as in proto/auspex/v1/events.proto.
const TYPE: u32 = 1;
const JSON: u32 = 2;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub r#type: &'static str,
    pub json: Arc<str>,
}

fn field_len(tag: u32, s: &str) -> usize {
    match s.len() {
        0 => 0,
        n => key_len(tag) + encoded_len_varint(n as u64) + n,
    }
}

fn encode_field(tag: u32, s: &str, buf: &mut impl BufMut) {
    // proto3: an empty string is the default, not sent.
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

impl prost::Message for Event {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_field(TYPE, self.r#type, buf);
        encode_field(JSON, &self.json, buf);
    }

    /// The server only sends events: whatever comes is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        field_len(TYPE, self.r#type) + field_len(JSON, &self.json)
    }

    fn clear(&mut self) {
        *self = Event::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The bytes decode as the generated type the clients use.
    #[test]
    fn encodes_as_the_proto_message() {
        mod client {
            include!(concat!(env!("OUT_DIR"), "/client/auspex.v1.rs"));
        }
        for (kind, json) in [
            ("process_exec", r#"{"a":"é"}"#.to_string()),
            ("", String::new()),
            ("connection_open", "x".repeat(300)),
        ] {
            let event = Event {
                r#type: kind,
                json: json.as_str().into(),
            };
            let bytes = event.encode_to_vec();
            assert_eq!(bytes.len(), event.encoded_len());
            let decoded = client::Event::decode(bytes.as_slice()).unwrap();
            assert_eq!((decoded.r#type.as_str(), decoded.json), (kind, json));
        }
    }
}
