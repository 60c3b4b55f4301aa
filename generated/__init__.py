# generated code lives here: written by `make generate`, never edited by hand.
