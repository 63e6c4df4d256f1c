//! A valid component that is not a handler: it exports `greet`, not
//! `handle`. The host must refuse it with a clear reason.
wit_bindgen::generate!({
    inline: "package test:other; world other { export greet: func() -> string; }",
});

struct Other;

impl Guest for Other {
    fn greet() -> String {
        "hello".into()
    }
}

export!(Other);
