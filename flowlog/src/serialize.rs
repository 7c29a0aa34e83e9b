//! JSON (and any serde format) output of records: keys are the AWS field names, numbers are
//! numbers, addresses and words are strings, and absent fields are left out.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::record::Record;
use crate::value::Value;

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Absent => s.serialize_none(),
            Value::Text(t) => s.serialize_str(t),
            Value::Addr(a) => s.collect_str(a),
            Value::Int(n) => s.serialize_u64(*n),
            Value::Action(a) => s.serialize_str(a.as_str()),
            Value::LogStatus(v) => s.serialize_str(v.as_str()),
            Value::IpType(v) => s.serialize_str(v.as_str()),
            Value::FlowDirection(v) => s.serialize_str(v.as_str()),
            Value::TrafficPath(p) => s.serialize_u8(p.code()),
        }
    }
}

impl Serialize for Record<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let present = self.values().iter().filter(|v| !v.is_absent()).count();
        let mut map = s.serialize_map(Some(present))?;
        for (field, value) in self.format().fields().iter().zip(self.values()) {
            if !value.is_absent() {
                map.serialize_entry(field.name(), value)?;
            }
        }
        map.end()
    }
}
