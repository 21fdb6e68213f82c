//! The small part of XML that libvirt's domain and checkpoint documents use: elements,
//! attributes, text, comments, the five named entities and character references. No
//! DTDs, no namespaces; enough to read what `virsh dumpxml` prints and to write the
//! documents tapevault hands to virsh.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// Escapes text for an attribute value or element content.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

fn unescape(s: &str) -> Result<String, String> {
    let mut o = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        o.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("unterminated entity in {s:?}"))?;
        let ent = &after[..end];
        match ent {
            "amp" => o.push('&'),
            "lt" => o.push('<'),
            "gt" => o.push('>'),
            "quot" => o.push('"'),
            "apos" => o.push('\''),
            _ => {
                let code = if let Some(h) = ent.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                o.push(
                    code.and_then(char::from_u32)
                        .ok_or_else(|| format!("unknown entity &{ent};"))?,
                );
            }
        }
        rest = &after[end + 1..];
    }
    o.push_str(rest);
    Ok(o)
}

/// Parses a document into its root element.
pub fn parse(doc: &str) -> Result<Element, String> {
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut rest = doc;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&unescape(rest)?);
            }
            break;
        };
        if lt > 0 {
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&unescape(&rest[..lt])?);
            }
        }
        rest = &rest[lt..];
        if let Some(r) = rest.strip_prefix("<!--") {
            let end = r.find("-->").ok_or("unterminated comment")?;
            rest = &r[end + 3..];
            continue;
        }
        if rest.starts_with("<?") || rest.starts_with("<!") {
            let end = rest.find('>').ok_or("unterminated declaration")?;
            rest = &rest[end + 1..];
            continue;
        }
        let end = tag_end(rest).ok_or("unterminated tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let el = stack.pop().ok_or_else(|| format!("stray </{name}>"))?;
            if el.name != name.trim() {
                return Err(format!("<{}> closed by </{}>", el.name, name.trim()));
            }
            match stack.last_mut() {
                Some(p) => p.children.push(el),
                None => root = Some(el),
            }
            continue;
        }
        let (tag, empty) = match tag.strip_suffix('/') {
            Some(t) => (t, true),
            None => (tag, false),
        };
        let el = parse_tag(tag)?;
        if empty {
            match stack.last_mut() {
                Some(p) => p.children.push(el),
                None => root = Some(el),
            }
        } else {
            stack.push(el);
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{}> is never closed", open.name));
    }
    root.ok_or_else(|| "no element".to_string())
}

/// The index of the `>` ending the tag at the start of `s`, quotes respected.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"') | (None, '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_tag(tag: &str) -> Result<Element, String> {
    let tag = tag.trim();
    let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
    let mut el = Element {
        name: tag[..name_end].to_string(),
        ..Default::default()
    };
    if el.name.is_empty() {
        return Err("an element without a name".into());
    }
    let mut rest = tag[name_end..].trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("attribute without a value in <{tag}>"))?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let q = after
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| format!("unquoted attribute {key} in <{tag}>"))?;
        let close = after[1..]
            .find(q)
            .ok_or_else(|| format!("unterminated attribute {key} in <{tag}>"))?;
        el.attrs.push((key, unescape(&after[1..1 + close])?));
        rest = after[close + 2..].trim_start();
    }
    Ok(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_virsh_prints() {
        let d = parse(
            "<?xml version='1.0'?>\n<!-- c -->\n<domain type='qemu' id=\"3\"><name>a&amp;b</name>\
             <devices><disk type='file' device='disk'><source file='/x/a b.qcow2' index='1'/>\
             <target dev='vda' bus='virtio'/><serial>S&#x31;</serial><readonly/></disk></devices></domain>",
        )
        .unwrap();
        assert_eq!(d.attr("type"), Some("qemu"));
        assert_eq!(d.child("name").unwrap().text, "a&b");
        let disk = d.child("devices").unwrap().child("disk").unwrap();
        assert_eq!(
            disk.child("source").unwrap().attr("file"),
            Some("/x/a b.qcow2")
        );
        assert_eq!(disk.child("serial").unwrap().text, "S1");
        assert!(disk.child("readonly").is_some());
    }

    #[test]
    fn refuses_broken_documents() {
        for bad in ["<a>", "<a></b>", "<a x=1/>", "</a>", "<a x='1/>", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(escape("a<'&\">"), "a&lt;&apos;&amp;&quot;&gt;");
    }
}
