use baton_gpt2::tokenizer::Gpt2Tokenizer;

#[test]
fn known_gpt2_ids() {
    let t = Gpt2Tokenizer::new();
    assert_eq!(t.encode("Hello world"), vec![15496, 995]);
    assert_eq!(t.encode("<|endoftext|>"), vec![50256]);
    assert_eq!(t.encode(" the"), vec![262]);
}

#[test]
fn round_trips() {
    let t = Gpt2Tokenizer::new();
    for text in ["Hello world", "  spaces,\ttabs\nand newlines", "naïve café — 東京 🚀", "<|endoftext|>next doc"]
    {
        assert_eq!(t.decode(&t.encode(text)).as_deref(), Some(text));
    }
    assert_eq!(t.decode(&[50257]), None, "ids past GPT-2's vocabulary have no text");
}
