"""Train an MLP on the 8×8 digits shipped with fastprop, save it, load it, evaluate it."""
import os
import tempfile

import fastprop as fp

X, y = fp.datasets.load_digits()
X_train, X_test, y_train, y_test = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)

model = fp.Sequential(fp.Linear(64, 128, rng=0), fp.ReLU(),
                      fp.Linear(128, 128, rng=1), fp.ReLU(),
                      fp.Linear(128, 10, rng=2))
print(model)
loss = fp.SoftmaxCrossEntropy()
history = fp.fit(model, X_train, y_train, loss=loss,
                 optimizer=fp.Adam(model.parameters(), lr=1e-3),
                 epochs=30, batch_size=32, validation_data=(X_test, y_test))
print("final epoch:", {k: round(v[-1], 4) for k, v in history.history.items() if v})

path = os.path.join(tempfile.mkdtemp(), "digits.npz")
fp.save(model, path)
restored = fp.load(path)
print("restored model:", fp.evaluate(restored, X_test, y_test, loss))
print("first test digit, class probabilities:", fp.predict_proba(restored, X_test[:1]).round(3))
