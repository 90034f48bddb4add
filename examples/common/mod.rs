//! The one argument parser of the examples: positional arguments in order, each optional one with its
//! default, and an error naming the argument and the example's usage line.
#![allow(dead_code)]
use std::fmt::Display;
use std::str::FromStr;

use anyhow::{anyhow, Result};
use emo_directions::RunDir;
use emo_model::{LoadOptions, Model};

/// The command line of an example.
pub struct Args {
    rest: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

impl Args {
    /// The arguments after the program name; `usage` is printed with any error.
    pub fn new(usage: &'static str) -> Self {
        Args { rest: std::env::args().skip(1), usage }
    }

    /// The next argument, which must be there.
    pub fn required(&mut self, what: &str) -> Result<String> {
        self.rest.next().ok_or_else(|| anyhow!("missing {what}; usage: {}", self.usage))
    }

    /// The next argument parsed, or `default` when there is none.
    pub fn or<T: FromStr>(&mut self, what: &str, default: T) -> Result<T>
    where
        T::Err: Display,
    {
        match self.rest.next() {
            None => Ok(default),
            Some(s) => s.parse().map_err(|e| anyhow!("{what} `{s}`: {e}; usage: {}", self.usage)),
        }
    }

    /// The run folder (default `runs/example`).
    pub fn run(&mut self) -> RunDir {
        RunDir::new(self.rest.next().unwrap_or_else(|| "runs/example".into()))
    }

    /// The device (default the CPU).
    pub fn device(&mut self) -> Result<tch::Device> {
        let name = self.rest.next().unwrap_or_else(|| "cpu".into());
        Ok(emo_model::device::parse_device(&name)?)
    }

    /// Loads `model` on the device the next argument names.
    pub fn model(&mut self, model: &str) -> Result<Model> {
        let device = self.device()?;
        Ok(Model::load(model, LoadOptions { device, ..Default::default() })?)
    }
}
