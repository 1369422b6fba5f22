"""Device families defined only in the tests, to prove that a family is a module and nothing more."""
