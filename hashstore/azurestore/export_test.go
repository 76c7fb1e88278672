package azurestore

// BlockSize is blockSize for tests.
var BlockSize = blockSize
