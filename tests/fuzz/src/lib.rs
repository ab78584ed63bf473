//! What the fuzz targets share.

/// A spec file: parsing and validation never panic, and what is accepted reads back the
/// same from its JSON and is accepted again.
pub fn spec(text: &str) {
    let Ok(request) = baton_proto::spec::parse_request(text) else { return };
    let Some(spec) = request.spec.as_ref() else { return };
    if baton_proto::spec::validate(spec).is_err() {
        return;
    }
    let json = serde_json::to_string(&request).expect("an accepted request serializes");
    let again = baton_proto::spec::parse_request(&json).unwrap_or_else(|e| panic!("its JSON {json} parses: {e}"));
    // (Compared as messages: maps encode in no fixed order.)
    assert_eq!(again, request, "{json} reads back differently");
    baton_proto::spec::validate(again.spec.as_ref().expect("a spec")).expect("and is accepted again");
}
