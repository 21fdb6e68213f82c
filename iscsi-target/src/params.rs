//! Login key negotiation (RFC 7143 sections 6 and 13): each key's result function and
//! the values this target offers.

/// What this target offers (and so the upper bounds of the results).
pub const OUR_MAX_RECV_DATA_SEGMENT: u32 = 262_144;
pub const OUR_MAX_BURST: u32 = 1 << 20;
pub const OUR_FIRST_BURST: u32 = 262_144;

/// The operational parameters of a session and connection after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub initiator_name: Option<String>,
    pub target_name: Option<String>,
    pub discovery: bool,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_burst: u32,
    pub first_burst: u32,
    /// Largest data segment the initiator accepts (limits our Data-In PDUs).
    pub initiator_mrdsl: u32,
    pub max_connections: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
    pub max_outstanding_r2t: u32,
}

impl Default for Negotiated {
    /// RFC 7143 defaults (section 13), which apply to keys the initiator never sends.
    fn default() -> Self {
        Negotiated {
            initiator_name: None,
            target_name: None,
            discovery: false,
            initial_r2t: true,
            immediate_data: true,
            max_burst: 262_144,
            first_burst: 65_536,
            initiator_mrdsl: 8192,
            max_connections: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            max_outstanding_r2t: 1,
        }
    }
}

/// Outcome of one round of negotiation.
#[derive(Debug, Default)]
pub struct Round {
    pub reply: Vec<(String, String)>,
    /// A key whose value makes the login impossible (e.g. only CHAP offered).
    pub fatal: Option<String>,
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

impl Negotiated {
    /// Answer one set of keys from a Login (or Text) request. `security` is true in the
    /// security negotiation stage, the only one where AuthMethod means something.
    /// Operational keys offered early are negotiated all the same (initiators differ
    /// in when they send them). Values out of range are answered `Reject` (RFC 7143
    /// section 6.2).
    pub fn negotiate(&mut self, keys: &[(String, String)], security: bool) -> Round {
        let mut r = Round::default();
        let mut push = |k: &str, v: String| r.reply.push((k.to_string(), v));
        let mut fatal = None;
        for (k, v) in keys {
            let k = k.as_str();
            match k {
                "InitiatorName" => self.initiator_name = Some(v.clone()),
                "TargetName" => self.target_name = Some(v.clone()),
                "InitiatorAlias" => {}
                "SessionType" => match v.as_str() {
                    "Discovery" => self.discovery = true,
                    "Normal" => self.discovery = false,
                    _ => push(k, "Reject".into()),
                },
                "AuthMethod" if !security => push(k, "Irrelevant".into()),
                "AuthMethod" => {
                    if v.split(',').any(|m| m == "None") {
                        push(k, "None".into());
                    } else {
                        push(k, "Reject".into());
                        fatal = Some(format!(
                            "AuthMethod={v}: this target offers no authentication (None only)"
                        ));
                    }
                }
                "HeaderDigest" | "DataDigest" => {
                    if v.split(',').any(|m| m == "None") {
                        push(k, "None".into());
                    } else {
                        push(k, "Reject".into());
                        fatal = Some(format!("{k}={v}: this target supports no digests"));
                    }
                }
                "MaxConnections" => match number(v) {
                    Some(n) if (1..=65535).contains(&n) => {
                        self.max_connections = 1;
                        push(k, "1".into());
                    }
                    _ => push(k, "Reject".into()),
                },
                "InitialR2T" => match yes_no(v) {
                    // OR function; we are happy with No (unsolicited data).
                    Some(b) => {
                        self.initial_r2t = b;
                        push(k, yn(b));
                    }
                    None => push(k, "Reject".into()),
                },
                "ImmediateData" => match yes_no(v) {
                    // AND function; we accept immediate data.
                    Some(b) => {
                        self.immediate_data = b;
                        push(k, yn(b));
                    }
                    None => push(k, "Reject".into()),
                },
                "MaxBurstLength" => match number(v) {
                    Some(n) if (512..=(1 << 24) - 1).contains(&n) => {
                        self.max_burst = (n as u32).min(OUR_MAX_BURST);
                        push(k, self.max_burst.to_string());
                        self.first_burst = self.first_burst.min(self.max_burst);
                    }
                    _ => push(k, "Reject".into()),
                },
                "FirstBurstLength" => match number(v) {
                    Some(n) if (512..=(1 << 24) - 1).contains(&n) => {
                        self.first_burst = (n as u32).min(OUR_FIRST_BURST).min(self.max_burst);
                        push(k, self.first_burst.to_string());
                    }
                    _ => push(k, "Reject".into()),
                },
                "MaxRecvDataSegmentLength" => match number(v) {
                    // Declarative: what the initiator can receive.
                    Some(n) if (512..=(1 << 24) - 1).contains(&n) => {
                        self.initiator_mrdsl = n as u32;
                    }
                    _ => push(k, "Reject".into()),
                },
                "DefaultTime2Wait" => match number(v) {
                    // MAX function; ours is 0.
                    Some(n) if n <= 3600 => push(k, n.to_string()),
                    _ => push(k, "Reject".into()),
                },
                "DefaultTime2Retain" => match number(v) {
                    // MIN function; at ErrorRecoveryLevel 0 nothing is retained.
                    Some(n) if n <= 3600 => push(k, "0".into()),
                    _ => push(k, "Reject".into()),
                },
                "MaxOutstandingR2T" => match number(v) {
                    Some(n) if (1..=65535).contains(&n) => {
                        self.max_outstanding_r2t = 1;
                        push(k, "1".into());
                    }
                    _ => push(k, "Reject".into()),
                },
                "DataPDUInOrder" | "DataSequenceInOrder" => match yes_no(v) {
                    // OR function; we require order.
                    Some(_) => push(k, "Yes".into()),
                    None => push(k, "Reject".into()),
                },
                "ErrorRecoveryLevel" => match number(v) {
                    Some(n) if n <= 2 => {
                        self.error_recovery_level = 0;
                        push(k, "0".into());
                    }
                    _ => push(k, "Reject".into()),
                },
                "IFMarker" | "OFMarker" => match yes_no(v) {
                    Some(_) => push(k, "No".into()),
                    None => push(k, "Reject".into()),
                },
                "IFMarkInt" | "OFMarkInt" => push(k, "Irrelevant".into()),
                "TaskReporting" => push(k, "RFC3720".into()),
                "iSCSIProtocolLevel" => match number(v) {
                    Some(n) => push(k, n.min(1).to_string()),
                    None => push(k, "Reject".into()),
                },
                _ => push(k, "NotUnderstood".into()),
            }
        }
        r.fatal = fatal;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn get<'a>(r: &'a Round, k: &str) -> Option<&'a str> {
        r.reply
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, b)| b.as_str())
    }

    #[test]
    fn libiscsi_login_keys_get_the_answers_it_needs() {
        let mut n = Negotiated::default();
        let r = n.negotiate(
            &kv(&[
                ("InitiatorName", "iqn.2008-11.org.linux-kvm"),
                ("TargetName", "iqn.t"),
                ("SessionType", "Normal"),
                ("HeaderDigest", "None,CRC32C"),
                ("DataDigest", "None,CRC32C"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "262144"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
                ("MaxOutstandingR2T", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("IFMarker", "No"),
                ("OFMarker", "No"),
                ("MaxConnections", "1"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("X-com.example.Thing", "1"),
            ]),
            false,
        );
        assert!(r.fatal.is_none());
        assert_eq!(get(&r, "HeaderDigest"), Some("None"));
        assert_eq!(get(&r, "DataDigest"), Some("None"));
        assert_eq!(get(&r, "InitialR2T"), Some("No"));
        assert_eq!(get(&r, "ImmediateData"), Some("Yes"));
        assert_eq!(get(&r, "MaxBurstLength"), Some("262144"));
        assert_eq!(get(&r, "FirstBurstLength"), Some("262144"));
        assert_eq!(get(&r, "DefaultTime2Wait"), Some("2"));
        assert_eq!(get(&r, "ErrorRecoveryLevel"), Some("0"));
        assert_eq!(get(&r, "X-com.example.Thing"), Some("NotUnderstood"));
        // Declarative keys get no answer.
        assert_eq!(get(&r, "MaxRecvDataSegmentLength"), None);
        assert_eq!(n.initiator_mrdsl, 262144);
        assert_eq!(
            n.initiator_name.as_deref(),
            Some("iqn.2008-11.org.linux-kvm")
        );
        assert!(!n.initial_r2t && n.immediate_data);
    }

    #[test]
    fn results_follow_min_and_boolean_functions() {
        let mut n = Negotiated::default();
        let r = n.negotiate(
            &kv(&[
                ("MaxBurstLength", "16777215"),
                ("FirstBurstLength", "16777215"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
                ("MaxOutstandingR2T", "8"),
                ("ErrorRecoveryLevel", "2"),
            ]),
            false,
        );
        assert_eq!(get(&r, "MaxBurstLength"), Some("1048576"));
        assert_eq!(get(&r, "FirstBurstLength"), Some("262144"));
        assert_eq!(get(&r, "InitialR2T"), Some("Yes"));
        assert_eq!(get(&r, "ImmediateData"), Some("No"));
        assert_eq!(get(&r, "MaxOutstandingR2T"), Some("1"));
        assert_eq!(get(&r, "ErrorRecoveryLevel"), Some("0"));
        assert!(n.initial_r2t && !n.immediate_data);
    }

    #[test]
    fn bad_values_are_rejected_and_digests_or_chap_only_are_fatal() {
        let mut n = Negotiated::default();
        let r = n.negotiate(
            &kv(&[("MaxBurstLength", "12"), ("InitialR2T", "maybe")]),
            false,
        );
        assert_eq!(get(&r, "MaxBurstLength"), Some("Reject"));
        assert_eq!(get(&r, "InitialR2T"), Some("Reject"));
        assert!(r.fatal.is_none());
        let r = n.negotiate(&kv(&[("HeaderDigest", "CRC32C")]), false);
        assert!(r.fatal.is_some());
        let r = n.negotiate(&kv(&[("AuthMethod", "CHAP")]), true);
        assert!(r.fatal.unwrap().contains("AuthMethod"));
        let r = n.negotiate(&kv(&[("AuthMethod", "CHAP,None")]), true);
        assert_eq!(get(&r, "AuthMethod"), Some("None"));
        // Operational keys in the security stage are negotiated; AuthMethod later is
        // irrelevant.
        let r = n.negotiate(&kv(&[("MaxBurstLength", "65536")]), true);
        assert_eq!(get(&r, "MaxBurstLength"), Some("65536"));
        let r = n.negotiate(&kv(&[("AuthMethod", "None")]), false);
        assert_eq!(get(&r, "AuthMethod"), Some("Irrelevant"));
    }
}
